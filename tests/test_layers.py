"""The layers: no import runs back up. Lazy imports inside functions count too.

    nav_come.core   geometry, io, checkpoints, data, training loop, precision, metrics, layout
    nav_come        the world model: autoencoder, denoisers, experts, composition, training
    envs            the simulator, beside the world model (it reads and writes data through the core)
    planners        action choice: CEM, costs, policies, MPC (its heads learn labels from envs' worlds)
    eval, plan.py   measurement and the CLIs on top of everything
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("nav_come", "planners", "envs", "eval", "plan")
ALLOWED = {  # layer -> the project layers its modules may import
    "nav_come.core": {"nav_come.core"},
    "nav_come": {"nav_come.core", "nav_come"},
    "envs": {"nav_come.core", "envs"},
    "planners": {"nav_come.core", "nav_come", "envs", "planners"},
}


def layer(module: str) -> str | None:
    """The layer a project module belongs to (None: not the project's)."""
    if module == "nav_come.core" or module.startswith("nav_come.core."):
        return "nav_come.core"
    top = module.split(".")[0]
    return top if top in PROJECT else None


def imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative ones resolved against ``package``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}" if base == "planners" and alias.name == "cem" else base)
                      for alias in node.names]  # fmt: skip
    return found


def modules():
    for folder in ("nav_come", "envs", "planners"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            yield path, module


def test_the_layer_map_covers_the_project():
    layers = {layer(m) for _, m in modules()}
    assert layers == {"nav_come.core", "nav_come", "envs", "planners"}


@pytest.mark.parametrize("path, module", list(modules()), ids=lambda x: str(x) if isinstance(x, str) else "")
def test_no_import_runs_back_up_a_layer(path, module):
    mine = layer(module)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name} ({layer(name)} is above {mine})"
           for line, name in imports(path, package) if layer(name) and layer(name) not in ALLOWED[mine]]  # fmt: skip
    assert not bad, "\n".join(bad)


def test_the_check_catches_a_back_arrow(tmp_path):
    """The rule itself can fail: a core module that imports a planner is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from planners.cem import plan\n    from . import geometry\n")
    found = imports(bad, "nav_come.core")
    assert found == [(2, "planners.cem"), (3, "nav_come.core")]
    assert layer("planners.cem") not in ALLOWED["nav_come.core"] and layer("nav_come.core.io") in ALLOWED["envs"]
