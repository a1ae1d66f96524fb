"""plan.py --history: a memory method memorises the episode so far and plans beside NWM."""

import json
import shutil

import numpy as np
import pytest
from helpers import make_fake_trajectory
from test_memory_eval import tiny_memory_ckpt

import plan

FAST = ["--rollouts", "1", "--steps", "1", "--proposals-nomad", "2", "--proposals-gnm", "1", "--refine", "4"]
GOAL = str(plan.EXAMPLES / "goal.png")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("history")
    tiny_memory_ckpt(root / "ckpt")  # STM, SLTM, the LTM's settings, tiny policies
    make_fake_trajectory(root / "episode", T=30, H=32, loop=True)
    return root


def plan_json(setup, tmp_path, *extra):
    out = tmp_path / "plan.json"
    rc = plan.main(["--goal", GOAL, "--ckpt", str(setup / "ckpt"), *FAST, "--json", str(out),
                    "--figure", str(tmp_path / "plan.png"), *extra])  # fmt: skip
    return rc, json.loads(out.read_text()) if rc == 0 else None


def test_a_history_makes_come_the_default_and_plans_nwm_beside_it(setup, tmp_path):
    rc, got = plan_json(setup, tmp_path, "--history", str(setup / "episode"))
    assert rc == 0 and got["method"] == "come" and got["history_frames"] == 30
    assert got["compare"]["method"] == "nwm" and np.array(got["compare"]["waypoints"]).shape == (8, 3)
    assert got["compare"]["cost"] != got["cost"]  # the memory changed the imagined rollouts
    rc, until = plan_json(setup, tmp_path, "--history", str(setup / "episode"), "--until", "19")
    assert rc == 0 and until["history_frames"] == 20 and until["cost"] != got["cost"]


def test_a_student_beside_the_experts_is_the_default_with_a_history(setup, tmp_path):
    student = tmp_path / "ckpt"
    shutil.copytree(setup / "ckpt", student)
    shutil.copytree(student / "sltm", student / "student")  # an SLTM-shaped network plans alone as the student
    out = tmp_path / "plan.json"
    rc = plan.main(["--goal", GOAL, "--ckpt", str(student), *FAST, "--json", str(out), "--figure",
                    str(tmp_path / "plan.png"), "--history", str(setup / "episode")])  # fmt: skip
    got = json.loads(out.read_text())
    assert rc == 0 and got["method"] == "come-student" and got["compare"]["method"] == "nwm"


def test_without_a_history_nwm_plans_alone(setup, tmp_path):
    rc, got = plan_json(setup, tmp_path)
    assert rc == 0 and got["method"] == "nwm" and got["compare"] is None and got["history_frames"] == 0


@pytest.mark.parametrize("extra, match", [
    (["--history", "/nonexistent"], "is not a folder"),
    (["--until", "3"], "--until needs --history"),
    (["--history", "EPISODE", "--until", "99"], "past the end"),
    (["--history", "EPISODE", "--until", "1"], "the context needs 4"),
])  # fmt: skip
def test_history_mistakes_are_one_line(setup, tmp_path, capsys, extra, match):
    extra = [str(setup / "episode") if e == "EPISODE" else e for e in extra]
    rc, _ = plan_json(setup, tmp_path, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and match in err[0]


def test_the_shipped_example_episode_ends_at_the_example_context():
    from nav_come.core.data import load_frames, read_trajectory

    meta = json.loads((plan.EXAMPLES / "example.json").read_text())
    tr = read_trajectory(plan.EXAMPLES / "episode", load_images=False)
    assert len(tr) == meta["t"] + 1
    last = load_frames(plan.EXAMPLES / "episode", [meta["t"]], 64)[0].astype(float)
    png = plan.load_image(str(plan.EXAMPLES / "context_3.png"), 64).astype(float)
    assert np.abs(last - png).mean() < 4  # the same frame (JPEG against PNG)
