"""quant ops."""

from __future__ import annotations

import numpy as np

from .core import Attr, Kind, defop  # noqa: F401
