"""planners/pose_distance.py: the learned goal-pose distance, its training pairs and its CLI."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import make_fake_dataset
from test_world_model import SIZE, tiny_world_model

from eval import ate_rpe, costs
from nav_come.core.geometry import se2_relative
from nav_come.latents import LatentSet
from planners.cost import GoalDistance
from planners.methods import MethodUnavailable, load_distance
from planners.pose_distance import PairSampler, PoseHead, PoseHeadConfig, load_pose_head, main, pose_loss


def _latent_set(n_traj=2, T=30):
    """Straight trajectories, 0.25 m per frame, each heading 90 degrees left of the one before."""
    poses = []
    for k in range(n_traj):
        t, yaw = np.arange(T, dtype=np.float64), k * math.pi / 2
        poses.append(np.stack([k + 0.25 * t * math.cos(yaw), 0.25 * t * math.sin(yaw), np.full(T, yaw)], 1))
    poses = torch.from_numpy(np.concatenate(poses))
    starts = torch.arange(0, n_traj * T + 1, T)
    latents = torch.randn(n_traj * T, 4, 8, 8).half()
    return LatentSet(latents, poses, starts, [f"t{k}" for k in range(n_traj)])


def test_shapes_and_unit_heading():
    head = PoseHead(PoseHeadConfig(latent_size=8)).eval()
    out = head(torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8))
    assert out.shape == (5, 4)
    assert torch.allclose(out[:, 2:].norm(dim=1), torch.ones(5), atol=1e-5)
    d = head.distance(torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8))
    assert d.shape == (5,) and (d >= 0).all()


def test_distance_is_position_plus_weighted_heading():
    head = PoseHead(PoseHeadConfig(latent_size=8, yaw_weight=0.5)).eval()
    obs, goal = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    out = head(obs, goal)
    expect = out[:, :2].norm(dim=1) + 0.5 * torch.atan2(out[:, 3], out[:, 2]).abs()
    assert torch.allclose(head.distance(obs, goal), expect, atol=1e-6)
    one_goal = head.distance(obs, goal[:1].expand(3, -1, -1, -1))
    assert torch.allclose(GoalDistance("pose", pose_head=head)(obs, goal[0]), one_goal)


def test_pairs_stay_in_their_trajectory_and_radius_with_se2_labels():
    latents = _latent_set()
    sampler = PairSampler(latents, spacing=0.25, max_distance=3.0)  # within 3 frames
    obs, goal, labels = sampler.draw(256, torch.Generator().manual_seed(0))
    assert obs.shape == goal.shape == (256, 4, 8, 8) and labels.shape == (256, 4)
    # recover the indices from the latents (random, so unique)
    flat = latents.latents.float().flatten(1)
    a = torch.cdist(obs.flatten(1), flat).argmin(1).numpy()
    b = torch.cdist(goal.flatten(1), flat).argmin(1).numpy()
    assert np.all(a // 30 == b // 30) and np.all(np.abs(a - b) <= 3)
    assert len(np.unique(b - a)) == 7  # both directions, and the anchor itself
    rel = se2_relative(latents.poses.numpy()[a], latents.poses.numpy()[b])
    assert np.allclose(labels[:, :2], rel[:, :2] / 0.25, atol=1e-5)
    assert np.allclose(labels[:, 2], np.cos(rel[:, 2]), atol=1e-6)
    # along x, the goal k frames ahead lies k spacing units straight ahead (in both trajectories)
    assert np.allclose(labels[:, 0], b - a, atol=1e-5) and np.allclose(labels[:, 1], 0, atol=1e-5)


def test_pairs_respect_the_turn_limit_and_flips_mirror_the_labels():
    latents = _latent_set(T=20)
    turning = latents.poses.clone()
    turning[:20, 2] = torch.linspace(0, math.pi, 20)  # the first trajectory turns by 180 degrees as it drives
    latents = LatentSet(latents.latents, turning, latents.starts, latents.names)
    g = torch.Generator().manual_seed(1)
    _, _, labels = PairSampler(latents, 0.25, max_distance=100.0, max_turn=30.0).draw(512, g)
    assert (torch.atan2(labels[:, 3], labels[:, 2]).abs() <= math.radians(30) + 1e-5).all()
    plain = PairSampler(latents, 0.25, 100.0, 180.0).draw(64, torch.Generator().manual_seed(2))
    flipped = PairSampler(latents, 0.25, 100.0, 180.0, flip=True).draw(64, torch.Generator().manual_seed(2))
    mirrored = (flipped[0] != plain[0]).flatten(1).any(1)  # the pairs that were flipped
    assert 0 < mirrored.sum() < 64
    assert torch.equal(flipped[0][mirrored], plain[0][mirrored].flip(-1))
    assert torch.allclose(flipped[2][mirrored][:, [1, 3]], -plain[2][mirrored][:, [1, 3]])
    assert torch.equal(flipped[2][~mirrored], plain[2][~mirrored])


def test_loss_is_zero_at_the_labels_and_positive_elsewhere():
    labels = torch.tensor([[1.0, -2.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    assert pose_loss(labels, labels) == 0
    assert pose_loss(labels + 0.1, labels) > 0


def test_learned_distances_need_their_networks():
    with pytest.raises(ValueError, match="pose head"):
        GoalDistance("pose")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pose")
    make_fake_dataset(root / "data", {"train": 2, "val": 2}, T=30, H=SIZE)
    tiny_world_model().save(root / "ckpt")
    args = ["--data", str(root / "data"), "--ckpt", str(root / "ckpt"), "--out", str(root / "ckpt" / "pose"),
            "--cache", str(root / "cache"), "--steps", "6", "--batch-size", "8", "--val-every", "3", "--threads", "1"]
    assert main(args) == 0
    return root


def test_cli_trains_saves_and_resumes(trained):
    folder = trained / "ckpt" / "pose"
    meta = json.loads((folder / "config.json").read_text())["metadata"]
    assert meta["steps"] == 6 and meta["val_xy_error"] >= 0 and (folder / "last").is_dir()
    head = load_pose_head(folder)
    x, y = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    again = load_pose_head(folder)
    assert torch.equal(head(x, y), again(x, y))  # save/load round trip is deterministic
    assert main(["--data", str(trained / "data"), "--ckpt", str(trained / "ckpt"), "--out", str(folder),
                 "--cache", str(trained / "cache"), "--steps", "6"]) == 0  # fmt: skip
    assert torch.equal(load_pose_head(folder)(x, y), head(x, y))  # finished: not retrained


def test_pose_distance_in_costs_equals_the_planner(trained, tmp_path):
    common = ["--data", str(trained / "data"), "--ckpt", str(trained / "ckpt"), "--split", "val", "--n-samples", "2"]
    fast = ["--candidates", "6", "--top-k", "2", "--rollouts", "2", "--steps", "1"]
    out = tmp_path / "costs.json"
    assert costs.main([*common, *fast, "--seed", "0", "--json", str(out)]) == 0
    rows = {r["key"]: r for r in json.loads(out.read_text())["runs"][0]["rows"]}
    args = ate_rpe.build_parser().parse_args([*common, *fast, "--methods", "NWM", "--seeds", "0", "--iterations",
                                              "1", "--distance", "pose", "--search", "paper"])  # fmt: skip
    nwm = ate_rpe.run(args)["rows"][0]
    assert rows["pose"]["ate"] == pytest.approx(nwm["ate"], abs=1e-6)


def test_missing_pose_head_names_the_training_command(tmp_path):
    with pytest.raises(MethodUnavailable, match="planners.pose_distance"):
        load_distance("pose", tmp_path)


def test_bad_data_folder_is_one_line(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nope"), "--ckpt", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
