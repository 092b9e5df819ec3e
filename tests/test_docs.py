"""The guides' code blocks run as written (each guide in one namespace, blocks in order)."""

from __future__ import annotations

import re
import sys
import types

import pytest

from conftest import ROOT

GUIDES = ["docs/writing-a-pass.md"]


@pytest.mark.parametrize("guide", GUIDES)
def test_guide_code_runs(guide: str) -> None:
    import passes.base as base

    text = (ROOT / guide).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"{guide} has no python blocks"
    registered = dict(base._REGISTRY)
    module = types.ModuleType("guide")  # dataclasses need the code's module to be importable
    sys.modules["guide"] = module
    try:
        for block in blocks:
            exec(compile(block, guide, "exec"), module.__dict__)  # noqa: S102 - our own documentation
    finally:
        del sys.modules["guide"]
        base._REGISTRY.clear()
        base._REGISTRY.update(registered)  # the guide's pass does not leak into other tests
