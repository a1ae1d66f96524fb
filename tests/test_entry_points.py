"""The installed commands (``[project.scripts]``) point at real ``main(argv) -> int`` functions."""

import importlib
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
SCRIPTS = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_command_runs_its_cli(name, capsys):
    module, _, func = SCRIPTS[name].partition(":")
    main = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out


def test_the_commands_cover_plan_eval_collect_train():
    assert {"nav-come-plan", "nav-come-eval", "nav-come-collect", "nav-come-train"} <= set(SCRIPTS)
