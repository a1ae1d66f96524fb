"""Hostile but honest input: every case is one clear line and exit 2, or the right answer; never a
silent wrong one."""

import json

import cv2
import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_memory_eval import tiny_memory_ckpt

import envs
import plan
from eval import navigate
from nav_come.core.checkpoint import WEIGHTS

FAST = ["--candidates", "6", "--top-k", "2", "--rollouts", "1"]
GOAL = str(plan.EXAMPLES / "goal.png")


def run(args, capsys):
    rc = plan.main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err.strip().splitlines()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_memory_ckpt(tmp_path_factory.mktemp("hostile") / "ckpt", experts=(), ltm=False)


def test_a_16_bit_goal_plans_like_its_8_bit_original(tmp_path, tiny, capsys):
    img = cv2.imread(GOAL)  # (H, W, 3) uint8 BGR
    cv2.imwrite(str(tmp_path / "goal16.png"), img.astype(np.uint16) * 257)
    assert cv2.imread(str(tmp_path / "goal16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    outs = []
    for goal in (GOAL, str(tmp_path / "goal16.png")):
        json_path = tmp_path / f"{len(outs)}.json"
        rc, _, _ = run(["--goal", goal, "--ckpt", str(tiny), *FAST, "--figure", str(tmp_path / "f.png"),
                        "--json", str(json_path)], capsys)  # fmt: skip
        assert rc == 0
        outs.append(json.loads(json_path.read_text()))
    assert outs[0]["waypoints"] == outs[1]["waypoints"] and outs[0]["cost"] == outs[1]["cost"]


def test_nan_weights_are_an_error_not_a_plan(tmp_path, tiny, capsys):
    import shutil

    bad = tmp_path / "nan"
    shutil.copytree(tiny, bad)
    weights = load_file(bad / "base" / WEIGHTS)
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
              bad / "base" / WEIGHTS)  # fmt: skip
    rc, _, err = run(["--goal", GOAL, "--ckpt", str(bad), *FAST, "--json", str(tmp_path / "p.json")], capsys)
    assert rc == 2 and len(err) == 1 and "not finite" in err[0] and not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("extra, match", [
    (["--context", *[str(plan.EXAMPLES / "context_0.png")] * 10], "exactly 4"),
    (["--context", "/nonexistent.png", *[str(plan.EXAMPLES / f"context_{k}.png") for k in (1, 2, 3)]],
     "context image '/nonexistent.png' does not exist"),
    (["--figure", str(plan.EXAMPLES / "goal.png" / "plan.png")], "cannot be written"),  # under a file
    (["--threads", "-1"], "--threads must be >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--rollouts", "0"], "rollouts must be >= 1"),
    (["--top-k", "50", "--candidates", "10"], "--top-k <= --candidates"),
])  # fmt: skip
def test_bad_flags_are_one_line_before_any_work(extra, match, tiny, capsys, monkeypatch):
    monkeypatch.setattr(plan, "run", lambda args: pytest.fail("planned despite a bad flag") if not any(
        f in extra for f in ("--steps", "--rollouts", "--top-k", "--context")) else plan_run(args))  # fmt: skip
    rc, _, err = run(["--goal", GOAL, "--ckpt", str(tiny), *FAST, *extra], capsys)
    assert rc == 2 and len(err) == 1 and match in err[0] and "Traceback" not in err[0]


plan_run = plan.run


def test_the_example_truth_is_shown_only_for_the_example_goal(tmp_path, tiny, capsys):
    args = ["--ckpt", str(tiny), *FAST, "--figure", str(tmp_path / "f.png")]
    assert run(["--goal", GOAL, *args], capsys)[1].count("true motion") == 1
    other = tmp_path / "other.png"
    cv2.imwrite(str(other), cv2.imread(str(plan.EXAMPLES / "context_0.png")))
    assert "true motion" not in run(["--goal", str(other), *args], capsys)[1]


def test_the_env_refuses_to_step_past_the_end():
    env = gym.make(envs.ENV_ID, world="maze", max_steps=2).unwrapped
    env.reset(seed=0)
    env.step([0.0, 0.0])
    _, _, terminated, truncated, _ = env.step([0.0, 0.0])
    assert truncated and not terminated
    with pytest.raises(RuntimeError, match="call reset"):
        env.step([0.0, 0.0])
    env.reset(seed=1)
    env.step([0.0, 0.0])  # a new episode steps again
    env.close()


def test_navigate_refuses_zero_episodes(capsys):
    assert navigate.main(["--episodes", "0", "--methods", "GNM"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--episodes, --max-steps and --replan-every must be >= 1" in err[0]
    assert navigate.main(["--replan-every", "0", "--methods", "GNM"]) == 2
    assert "got 40, 80, 0" in capsys.readouterr().err


def test_resume_refuses_regenerated_data_and_retrained_weights(tmp_path, capsys):
    """The same --data and --ckpt paths with other content: refused with the input named."""
    import shutil

    from helpers import add_tiny_policies, make_fake_dataset
    from test_world_model import SIZE, tiny_world_model

    from eval import ate_rpe

    make_fake_dataset(tmp_path / "data", {"train": 1, "test": 2}, T=30, H=SIZE)
    add_tiny_policies(tiny_world_model().save(tmp_path / "ckpt"))
    args = ["--data", str(tmp_path / "data"), "--ckpt", str(tmp_path / "ckpt"), "--methods", "NWM", "--seeds", "0",
            "--n-samples", "1", *FAST, "--steps", "1", "--resume", str(tmp_path / "keep")]  # fmt: skip
    assert ate_rpe.main(args) == 0
    assert ate_rpe.main(args) == 0  # unchanged inputs resume
    shutil.rmtree(tmp_path / "data")
    make_fake_dataset(tmp_path / "data", {"train": 1, "test": 2}, T=30, H=SIZE, seed=5)  # regenerated
    capsys.readouterr()
    assert ate_rpe.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the data at --data changed" in err[0]
    shutil.rmtree(tmp_path / "data")
    make_fake_dataset(tmp_path / "data", {"train": 1, "test": 2}, T=30, H=SIZE)  # the original again
    add_tiny_policies(tiny_world_model(seed=1).save(tmp_path / "ckpt"))  # retrained
    assert ate_rpe.main(args) == 2
    assert "the checkpoints changed" in capsys.readouterr().err


COLLECT = ["--world", "maze", "--n-traj", "3", "--traj-len", "20", "--seed", "3", "--traj-per-world", "1"]


def test_collection_refuses_other_settings_and_bad_folders(tmp_path, capsys):
    from envs import collect

    out = tmp_path / "data"
    assert collect.main(["--out", str(out), *COLLECT, "--workers", "1"]) == 0
    names = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert collect.main(["--out", str(out), *COLLECT, "--workers", "1", "--traj-len", "30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was collected with --traj-len 20" in err[0]
    assert sorted(p.name for p in out.iterdir()) == names  # nothing written
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert collect.main(["--out", str(tmp_path / "other"), *COLLECT]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert collect.main(["--out", str(tmp_path / "other" / "notes.txt" / "x"), *COLLECT]) == 2  # under a file
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create --out" in err[0] and "Traceback" not in err[0]


def test_sigterm_stops_the_collection_workers_too(tmp_path):
    """SIGTERM to the parent: it exits, its workers with it, and nothing is written afterwards."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "envs.collect", "--out", str(out), "--world", "maze", "--n-traj", "40",
           "--traj-len", "400", "--seed", "5", "--workers", "2", "--traj-per-world", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / "collect.json").is_file() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # the workers are simulating
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    time.sleep(2)
    alive = [pid for pid in children if subprocess.run(["kill", "-0", pid], capture_output=True).returncode == 0]
    assert children and not alive
    written = sorted(p.name for p in out.iterdir())
    time.sleep(3)
    assert sorted(p.name for p in out.iterdir()) == written  # no late writes


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line_naming_the_build(tiny, capsys):
    rc, _, err = run(["--goal", GOAL, "--ckpt", str(tiny), *FAST, "--device", "cuda"], capsys)
    assert rc == 2 and len(err) == 1 and "sees no CUDA device; use --device cpu" in err[0] and "re-export" not in err[0]
    assert navigate.main(["--episodes", "1", "--methods", "GNM", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sees no CUDA device" in err[0]
    rc, _, err = run(["--goal", GOAL, "--ckpt", str(tiny), *FAST, "--device", "gpu"], capsys)
    assert rc == 2 and "--device must be cpu, cuda, cuda:N or auto" in err[0]


def test_bad_sample_files_name_the_file(tmp_path, capsys):
    """An invalid navigation_eval.json, a sample past the end of its trajectory and a truncated
    kept result: one line each, naming the file."""
    from helpers import add_tiny_policies, make_fake_dataset
    from test_world_model import SIZE, tiny_world_model

    from eval import ate_rpe

    names = make_fake_dataset(tmp_path / "data", {"train": 1, "test": 2}, T=30, H=SIZE)
    add_tiny_policies(tiny_world_model().save(tmp_path / "ckpt"))
    index = tmp_path / "data" / "splits" / "test" / "navigation_eval.json"
    args = ["--data", str(tmp_path / "data"), "--ckpt", str(tmp_path / "ckpt"), "--methods", "GNM", "--seeds", "0",
            "--n-samples", "1", "--resume", str(tmp_path / "keep")]  # fmt: skip
    for text, match in (("[{\"traj\": ", "is not valid JSON"), ('{"traj": "x"}', 'must be a list of {"traj"'),
                        (json.dumps([{"traj": names["test"][0], "t": 25}]), "needs frames 22..33")):  # fmt: skip
        index.write_text(text)
        capsys.readouterr()
        assert ate_rpe.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
        assert str(index) in err[0] or names["test"][0] in err[0]
    index.write_text(json.dumps([{"traj": names["test"][0], "t": 10}]))
    assert ate_rpe.main(args) == 0
    record = next((tmp_path / "keep" / "GNM").glob("[0-9]*.json"))
    record.write_text(record.read_text()[:20])  # truncated by hand
    capsys.readouterr()
    assert ate_rpe.main(args) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "plan/s" not in line]  # less progress
    assert len(err) == 1 and str(record) in err[0] and "delete it" in err[0]
