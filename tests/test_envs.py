"""Simulator, ImageNav env and data collection contracts."""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs import collect
from envs.driver import Driver
from envs.occupancy import OccupancyMap
from envs.sim import Simulator
from envs.worlds import FAMILIES, generate_world
from nav_come.core.data.actions import one_step_actions
from nav_come.core.data.recon import read_split, read_trajectory
from nav_come.core.geometry import step_actions


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_world_different_seed_different_world(family):
    a, b, c = generate_world(family, 5), generate_world(family, 5), generate_world(family, 6)
    assert a.xml == b.xml and a.assets == b.assets
    assert a.xml != c.xml
    assert np.array_equal(Simulator(a, 32).render([0.5, 0.5, 1.0]), Simulator(b, 32).render([0.5, 0.5, 1.0]))


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown world family"):
        generate_world("forest", 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_check_env(family):
    env = gym.make(envs.ENV_ID, world=family, image_size=32, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    env.close()


def test_reset_is_deterministic_and_observations_are_images():
    env = gym.make(envs.ENV_ID, image_size=32)
    (o1, i1), (o2, i2) = env.reset(seed=11), env.reset(seed=11)
    assert np.array_equal(o1["rgb"], o2["rgb"]) and np.array_equal(o1["goal"], o2["goal"])
    assert np.allclose(i1["pose"], i2["pose"]) and i1["world_seed"] == i2["world_seed"]
    assert o1["rgb"].shape == (32, 32, 3) and o1["rgb"].dtype == np.uint8
    o3, _ = env.reset(seed=12)
    assert not np.array_equal(o1["goal"], o3["goal"])
    for key in ("is_success", "pose", "collision", "distance_to_goal"):
        assert key in i1


def test_reaching_the_goal_terminates_with_success():
    env = gym.make(envs.ENV_ID, image_size=16).unwrapped
    _, info = env.reset(seed=0)
    goal = env.goal_pose
    _, info = env.reset(seed=0, options={"world_seed": info["world_seed"], "start": goal - [0.3 * math.cos(goal[2]),
                                         0.3 * math.sin(goal[2]), 0], "goal": goal})
    _, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0], np.float32))
    assert terminated and info["is_success"] and reward > 0.9 and not truncated


def _facing_wall(sim: Simulator):
    """A free pose 1 m in front of a wall: the first wall footprint with free space on its -x side."""
    occ = OccupancyMap(sim.world)
    for f in sim.world.footprints:
        if f.kind == "box" and f.a < f.b and f.a < 0.1:  # a thin wall along y
            start = np.array([f.x - f.a - 1.0, f.y, 0.0])
            if occ.is_free(start[:2]) and sim.set_pose(start):
                return start, f
    raise AssertionError("no wall found")


def test_robot_cannot_drive_through_a_wall():
    sim = Simulator(("maze", 3), 16)
    start, wall = _facing_wall(sim)
    hits = [sim.step(1.0, 0.0) for _ in range(12)]  # 3 m of commands towards a wall 1 m away
    assert any(hits)
    assert sim.pose[0] < wall.x - wall.a  # stopped short of the wall's face
    assert sim.pose[0] > start[0] + 0.5  # but it did drive up to it
    assert sim.step(1.0, 0.0)  # still blocked


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    collect.main(["--out", str(out), "--world", "maze", "--n-traj", "6", "--traj-len", "40", "--seed", "3",
                  "--workers", "1", "--traj-per-world", "1"])
    return out


def test_collected_data_reads_back_and_matches_the_declared_spacing(tiny_data):
    meta = json.loads((tiny_data / "dataset.json").read_text())
    assert meta["metric_waypoint_spacing"] == 0.25 and meta["rate_hz"] == 4.0
    names = read_split(tiny_data / "splits" / "train" / "traj_names.txt")
    tr = read_trajectory(tiny_data / names[0])
    assert tr.frames.shape == (40, 64, 64, 3) and tr.position.shape == (40, 2) and tr.yaw.shape == (40,)
    act = one_step_actions(tr.position, tr.yaw, meta["metric_waypoint_spacing"])
    # at most v_max·dt = one spacing unit per step, and mostly forward motion
    assert np.linalg.norm(act[:, :2], axis=1).max() <= 1.0 + 1e-6
    assert np.abs(act[:, 2]).max() <= 0.25 + 1e-6  # w_max·dt
    assert (act[:, 0] > 0.2).mean() > 0.5


def test_splits_come_from_disjoint_world_seeds(tiny_data):
    meta = json.loads((tiny_data / "dataset.json").read_text())
    seeds = {k: set(v) for k, v in meta["world_seeds"].items()}
    assert not seeds["train"] & seeds["test"] and not seeds["train"] & seeds["val"] and not seeds["val"] & seeds["test"]
    for split in ("train", "val", "test"):
        for name in read_split(tiny_data / "splits" / split / "traj_names.txt"):
            assert int(name.split("_")[1]) in seeds[split]
    nav = json.loads((tiny_data / "splits" / "test" / "navigation_eval.json").read_text())
    test_names = set(read_split(tiny_data / "splits" / "test" / "traj_names.txt"))
    assert nav and all(s["traj"] in test_names and 3 <= s["t"] <= 40 - 9 for s in nav)


def test_collection_resumes_without_rewriting_finished_trajectories(tiny_data):
    names = read_split(tiny_data / "splits" / "train" / "traj_names.txt")
    keep, redo = tiny_data / names[0], tiny_data / names[1]
    before = read_trajectory(redo, load_images=False).position
    mtime = (keep / "traj_data.pkl").stat().st_mtime_ns
    for f in redo.iterdir():
        f.unlink()
    redo.rmdir()
    (tiny_data / ".stale.tmp-1").mkdir()  # what a crash leaves behind
    collect.main(["--out", str(tiny_data), "--world", "maze", "--n-traj", "6", "--traj-len", "40", "--seed", "3",
                  "--workers", "1", "--traj-per-world", "1"])
    assert (keep / "traj_data.pkl").stat().st_mtime_ns == mtime
    assert np.array_equal(read_trajectory(redo, load_images=False).position, before)
    assert not (tiny_data / ".stale.tmp-1").exists()


def test_wall_pushes_record_commands_that_the_wall_stopped():
    sim = Simulator(("maze", 3), 16)
    try:
        plain = Driver(sim, OccupancyMap(sim.world), np.random.default_rng(4))
        _, poses, _ = plain.run(120)
        taken = step_actions(poses)
        free = ~plain.contact[1:]
        assert np.allclose(plain.commanded[:-1][free], taken[free], atol=1e-9)  # free steps go as commanded
        assert not plain.commanded[-1].any()
        pushing = Driver(sim, OccupancyMap(sim.world), np.random.default_rng(4), wall_push=0.05)
        _, poses, _ = pushing.run(240)
    finally:
        sim.close()
    taken, blocked = step_actions(poses), pushing.contact[1:]
    assert blocked.mean() > 0.05 and blocked.mean() > plain.contact.mean()
    short = np.linalg.norm(pushing.commanded[:-1, :2], axis=1) - np.linalg.norm(taken[:, :2], axis=1)
    assert (short[blocked] > -1e-9).all() and short[blocked].mean() > 0.05  # the wall ate part of each command
    assert np.allclose(pushing.commanded[:-1][~blocked], taken[~blocked], atol=1e-9)
    with pytest.raises(ValueError, match="wall_push"):
        Driver(sim, OccupancyMap(sim.world), np.random.default_rng(4), wall_push=1.5)


def test_collected_contact_reads_back(tiny_data):
    meta = json.loads((tiny_data / "dataset.json").read_text())
    assert meta["wall_push"] == 0.0 and set(meta["contact_share"]) == {"train", "val", "test"}
    tr = read_trajectory(tiny_data / read_split(tiny_data / "splits" / "train" / "traj_names.txt")[0])
    assert tr.commanded.shape == (40, 3) and tr.contact.shape == (40,) and tr.contact.dtype == bool
