"""The shipped checkpoints' plans on fixed samples, kept in ``tests/data/shipped_plans.json``.

Every method plans the shipped example (``examples/``) in fp32 with a small CEM; the memory
methods first observe the episode the example was cut from (re-driven in the simulator). A
change to the planning code that is meant to change no number (a refactor) must leave these
plans as they are. A change that is meant to change a method rewrites the file on purpose::

    python tests/test_shipped_plans.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "data" / "shipped_plans.json"
METHODS = ("nwm", "come", "come-student", "nwm+stm", "nwm+ltm", "nomad+nwm", "nomad+come", "gnm", "nomad")
SETTINGS = {"candidates": 24, "top_k": 4, "rollouts": 2, "precision": "fp32", "seed": 0, "search": "paper"}


def shipped_plans(methods=METHODS) -> dict:
    """{method: {"waypoints": [[x, y, yaw] x 8], "cost": float or None}} of the shipped checkpoints."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from eval.bench import example_episode
    from nav_come.core.checkpoint import SHIPPED_CHECKPOINT
    from nav_come.core.data.config import data_config
    from planners import cem
    from planners.methods import load_method

    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = cem.CEMConfig.for_dataset(data_config("nav_come_sim"), n_candidates=SETTINGS["candidates"],
                                    top_k=SETTINGS["top_k"])  # fmt: skip
    episode, out = None, {}
    for name in methods:
        planner = load_method(name, SHIPPED_CHECKPOINT, cem_config=cfg, rollouts=SETTINGS["rollouts"],
                              precision=SETTINGS["precision"], search=SETTINGS["search"])  # fmt: skip
        if episode is None:
            episode = example_episode(64, 4)
        if getattr(planner, "uses_memory", hasattr(planner, "observe")) and episode["history"] is not None:
            planner.observe(*episode["history"])
        res = planner(episode["context"], episode["goal"], torch.Generator().manual_seed(SETTINGS["seed"]))
        out[name] = {"waypoints": res.waypoints.double().numpy().round(6).tolist(), "cost": res.cost}
    return out


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("group", [("nwm", "nomad+nwm", "gnm", "nomad"), ("come", "come-student", "nomad+come"),
                                   ("nwm+stm", "nwm+ltm")])  # fmt: skip
def test_the_shipped_checkpoints_plan_as_recorded(golden, group):
    assert golden["settings"] == SETTINGS
    got = shipped_plans(group)
    for name in group:
        want = golden["plans"][name]
        assert torch.allclose(torch.tensor(got[name]["waypoints"]), torch.tensor(want["waypoints"]), atol=1e-4), name
        assert (got[name]["cost"] is None) == (want["cost"] is None), name
        if want["cost"] is not None:
            assert got[name]["cost"] == pytest.approx(want["cost"], rel=1e-4, abs=1e-6), name


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_shipped_plans.py --write")
    from nav_come.core.io import atomic_write_text

    atomic_write_text(GOLDEN, json.dumps({"settings": SETTINGS, "plans": shipped_plans()}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
