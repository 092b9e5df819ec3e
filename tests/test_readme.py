"""README.md's two commands stay true: CI runs exactly the test command it shows."""

from __future__ import annotations

import re

from conftest import ROOT


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text)


def test_ci_runs_the_readme_test_command() -> None:
    test_cmd = next(c for c in _commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_cmd


def test_main_command_uses_bundled_files() -> None:
    main_cmd = next(c for c in _commands() if "mcc compress" in c)
    for path in re.findall(r"tests/data/\S+", main_cmd):
        assert (ROOT / path).is_file()
