"""planners/progress.py: the goal-progress head, its labels, its CLI and its term in the planning cost."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import make_fake_dataset
from test_world_model import SIZE, tiny_world_model

from eval import ate_rpe, costs
from nav_come.latents import LatentSet
from planners import cem
from planners.cost import GoalDistance, ProgressTerm, world_model_cost
from planners.methods import MethodUnavailable, WorldModelPlanner, load_progress
from planners.progress import (
    ProgressConfig,
    ProgressHead,
    ProgressPairs,
    frames_to_goal,
    load_progress_head,
    main,
    place_groups,
    progress_loss,
)


def test_steps_are_bounded_by_the_horizon_and_take_one_goal_or_many():
    head = ProgressHead(ProgressConfig(latent_size=8, horizon=32)).eval()
    obs, goals = torch.randn(5, 4, 8, 8), torch.randn(5, 4, 8, 8)
    steps = head.steps(obs * 50, goals)
    assert steps.shape == (5,) and (steps >= 0).all() and (steps <= 32).all()
    one = head.steps(obs, goals[0])
    assert torch.allclose(one, head.steps(obs, goals[:1].expand(5, -1, -1, -1)))
    assert torch.allclose(one, 32 * torch.sigmoid(head(obs, goals[:1].expand(5, -1, -1, -1))))


def test_frames_to_goal_counts_to_the_first_arrival():
    # out along x for 4 frames, back for 4, out again: frame 10 stands where frame 2 stood
    x = np.r_[0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2] * 0.25
    yaw = np.r_[np.zeros(5), np.full(4, math.pi), np.zeros(2)]
    poses = np.stack([x, np.zeros_like(x), yaw], 1)
    assert frames_to_goal(poses, 10, radius=0.1, turn=math.radians(30)) == 2  # first arrival, not 10
    assert frames_to_goal(poses, 6, radius=0.1, turn=math.radians(30)) == 6  # frame 2 faces the other way
    assert frames_to_goal(poses, 6, radius=0.1, turn=math.pi) == 2  # unless heading does not matter
    assert frames_to_goal(poses, 0, radius=0.1, turn=0.1) == 0


def test_place_groups_join_one_simulator_world_and_keep_other_names_apart():
    groups = place_groups(["maze_7_00", "maze_7_01", "maze_8_00", "jackal_2019_a", "jackal_2019_b"])
    assert groups[0] == groups[1] and len(set(groups)) == 4


def _latents(n_traj=3, T=40, world_per_traj=True):
    """Straight drives along x, 0.25 m per frame; names give each its own world (or all one)."""
    t = np.arange(T, dtype=np.float64)
    poses = np.concatenate([np.stack([0.25 * t, np.full(T, float(k)), np.zeros(T)], 1) for k in range(n_traj)])
    names = [f"maze_{k if world_per_traj else 0}_00" for k in range(n_traj)]
    return LatentSet(torch.randn(n_traj * T, 4, 8, 8).half(), torch.from_numpy(poses),
                     torch.arange(0, n_traj * T + 1, T), names)  # fmt: skip


def test_pairs_label_frames_ahead_and_other_places_far():
    latents = _latents()
    config = ProgressConfig(latent_size=8, horizon=10, match_distance=0.5, negatives=0.3)
    obs, goal, labels = ProgressPairs(latents, 0.25, config).draw(512, torch.Generator().manual_seed(0))
    assert obs.shape == goal.shape == (512, 4, 8, 8) and labels.shape == (512,)
    flat = latents.latents.float().flatten(1)
    a = torch.cdist(obs.flatten(1), flat).argmin(1).numpy()
    b = torch.cdist(goal.flatten(1), flat).argmin(1).numpy()
    same = a // 40 == b // 40
    assert np.all(b[same] >= a[same])  # goals lie ahead in time
    # straight drives: the first frame within 0.5 spacing units of the goal is the goal itself
    assert np.allclose(labels[same].numpy(), np.minimum(b - a, 10)[same])
    assert np.all(labels[~same].numpy() == 10) and 0.2 < (~same).mean() < 0.6  # far: negatives and past the end
    assert (labels[same] < 10).any() and (labels[same] == 10).any()  # ahead within and beyond the horizon


def test_pairs_refuse_data_of_one_place():
    with pytest.raises(ValueError, match="two places"):
        ProgressPairs(_latents(world_per_traj=False), 0.25, ProgressConfig(latent_size=8))


def test_loss_is_lowest_at_the_labels():
    labels = torch.tensor([0.0, 16.0, 64.0])
    at = torch.logit(torch.tensor([1e-4, 0.25, 1 - 1e-4]))
    assert progress_loss(at, labels, 64) < progress_loss(at + 1.0, labels, 64)
    assert progress_loss(at, labels, 64) < progress_loss(at - 1.0, labels, 64)


class _Steps:
    """A stand-in head: an imagined frame's estimate is its index in the flattened batch."""

    def steps(self, latents, goal):
        return torch.arange(len(latents), dtype=torch.float32)


def test_progress_term_reduces_over_frames_and_averages_over_rollouts():
    latents = torch.zeros(4, 3, 4, 8, 8)  # 2 candidates x 2 rollouts, 3 frames: estimates 0..11
    goal = torch.zeros(4, 8, 8)
    assert torch.equal(ProgressTerm(_Steps(), 1.0, "min").frames(latents, goal), torch.tensor([0.0, 3, 6, 9]))
    assert torch.equal(ProgressTerm(_Steps(), 1.0, "last").frames(latents, goal), torch.tensor([2.0, 5, 8, 11]))
    assert torch.equal(ProgressTerm(_Steps(), 1.0, "mean").frames(latents, goal), torch.tensor([1.0, 4, 7, 10]))
    assert torch.equal(ProgressTerm(_Steps(), 2.0, "min")(latents, goal, 2, 2), torch.tensor([3.0, 15.0]))
    with pytest.raises(ValueError, match="reduction"):
        ProgressTerm(_Steps(), 1.0, "max")


@pytest.mark.parametrize("distance", ["latent_mse", "pixel_mse"])
def test_progress_term_adds_to_the_world_model_cost(distance):
    wm = tiny_world_model()
    ctx = torch.rand(1, 4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    goal = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    deltas = cem.decode(torch.rand(3, 3) * 2 - 1, cem.CEMConfig())

    def cost(progress=None):
        f = world_model_cost(wm, ctx, goal, GoalDistance(distance), rollouts=2,
                             generator=torch.Generator().manual_seed(0), progress=progress)  # fmt: skip
        return f(deltas)

    plain = cost()
    assert torch.equal(cost(ProgressTerm(_Steps(), 0.0)), plain)
    # 3 candidates x 2 rollouts x 8 frames: min over frames 0, 8, 16, ...; rollout pairs average
    expect = 0.5 * torch.tensor([4.0, 20.0, 36.0])
    assert torch.allclose(cost(ProgressTerm(_Steps(), 0.5, "min")) - plain, expect)


def test_planner_names_the_progress_term():
    p = WorldModelPlanner(tiny_world_model(), cem.CEMConfig(n_candidates=8), GoalDistance("latent_mse"),
                          progress=ProgressTerm(_Steps(), 0.01, "min"))  # fmt: skip
    assert p.cost_name == "MSE of autoencoder latents + 0.01 x min estimated frames to the goal"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    make_fake_dataset(root / "data", {"train": 2, "val": 2}, T=30, H=SIZE)
    tiny_world_model().save(root / "ckpt")
    args = ["--data", str(root / "data"), "--ckpt", str(root / "ckpt"), "--out", str(root / "ckpt" / "progress"),
            "--cache", str(root / "cache"), "--steps", "6", "--batch-size", "8", "--val-every", "3", "--threads", "1",
            "--horizon", "16"]  # fmt: skip
    assert main(args) == 0
    return root


def test_cli_trains_saves_and_resumes(trained):
    folder = trained / "ckpt" / "progress"
    meta = json.loads((folder / "config.json").read_text())["metadata"]
    assert meta["steps"] == 6 and meta["val_mae"] >= 0 and "val_spearman" in meta and (folder / "last").is_dir()
    head = load_progress_head(folder)
    assert head.config.horizon == 16
    x, y = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(head.steps(x, y), load_progress_head(folder).steps(x, y))  # deterministic round trip
    assert main(["--data", str(trained / "data"), "--ckpt", str(trained / "ckpt"), "--out", str(folder),
                 "--cache", str(trained / "cache"), "--steps", "6"]) == 0  # fmt: skip
    assert torch.equal(load_progress_head(folder).steps(x, y), head.steps(x, y))  # finished: not retrained
    term = load_progress(trained / "ckpt", 0.1, "mean")
    assert term.weight == 0.1 and term.reduce == "mean"


def test_missing_progress_head_names_the_training_command(tmp_path):
    with pytest.raises(MethodUnavailable, match="planners.progress"):
        load_progress(tmp_path, 0.1, "min")


def test_bad_data_folder_is_one_line(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nope"), "--ckpt", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_costs_rank_the_progress_combinations_as_the_planner_plans(trained, tmp_path):
    common = ["--data", str(trained / "data"), "--ckpt", str(trained / "ckpt"), "--split", "val", "--n-samples", "2"]
    fast = ["--candidates", "6", "--top-k", "2", "--rollouts", "2", "--steps", "1"]
    out = tmp_path / "costs.json"
    assert costs.main([*common, *fast, "--seed", "0", "--progress-weights", "0", "0.5", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["key"]: r for r in result["runs"][0]["rows"]}
    assert result["protocol"]["progress_head"] is not None
    assert {"progress_min", "progress_mean", "progress_last", "latent_mse+0.5progress_mean"} <= set(rows)
    assert rows["latent_mse+0progress_min"]["ate"] == rows["latent_mse"]["ate"]  # weight 0: the plain distance
    args = ate_rpe.build_parser().parse_args([*common, *fast, "--methods", "NWM", "--seeds", "0", "--iterations", "1",
                                              "--distance", "latent_mse", "--search", "paper", "--progress-weight",
                                              "0.5", "--progress-reduce", "mean"])  # fmt: skip
    result = ate_rpe.run(args)
    assert result["rows"][0]["ate"] == pytest.approx(rows["latent_mse+0.5progress_mean"]["ate"], abs=1e-6)
    assert result["protocol"]["progress"]["weight"] == 0.5
