"""CEM planner, planning cost and plan.py contracts."""

import json
import math

import cv2
import numpy as np
import pytest
import torch
from helpers import add_tiny_policies
from test_world_model import SIZE, tiny_world_model

import plan
from planners import cem
from planners.cost import GoalDistance, world_model_cost
from planners.methods import WorldModelPlanner


def test_nwm_candidate_is_a_constant_step_with_heading_then_final_yaw():
    cfg = cem.CEMConfig()
    z = torch.tensor([[0.0, 0.5, 0.25]])  # dx = 1.25, dy = 2.0 spacing units, u = 0.25
    d = cem.decode(z, cfg)[0]  # (8, 3)
    assert torch.allclose(d[:, 0], torch.full((8,), 1.25)) and torch.allclose(d[:, 1], torch.full((8,), 2.0))
    assert math.isclose(d[0, 2], math.atan2(2.0, 1.25), rel_tol=1e-6)
    assert torch.all(d[1:-1, 2] == 0) and math.isclose(d[-1, 2], 0.25 * math.pi, rel_tol=1e-6)
    wp = cem.waypoints_from_actions(d)
    assert torch.allclose(wp[-1, :2], torch.tensor([10.0, 16.0]))


def test_cem_moves_towards_the_cheapest_plan_and_is_deterministic():
    cfg = cem.CEMConfig(iterations=6, init_std=(0.3, 0.3, 0.3))
    target = torch.tensor([4.0, 2.0])  # final waypoint we want, spacing units

    def cost(deltas):
        return (cem.waypoints_from_actions(deltas)[:, -1, :2] - target).norm(dim=-1)

    a = cem.plan(cost, cfg, torch.Generator().manual_seed(0))
    b = cem.plan(cost, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(a.waypoints, b.waypoints)
    assert (a.waypoints[-1, :2] - target).norm() < 0.5
    warm = cem.plan(cost, cem.CEMConfig(iterations=1), torch.Generator().manual_seed(1), a.mean, a.std)
    assert (warm.waypoints[-1, :2] - target).norm() < 1.0  # a warm start keeps the solution


def test_per_step_parameterisation_shapes():
    cfg = cem.CEMConfig(parameterisation="per_step", init_mean=(0.0, 0.0, 0.0))
    res = cem.plan(lambda d: d[..., 0].sum(-1), cfg, torch.Generator().manual_seed(0))
    assert res.waypoints.shape == (8, 3) and res.mean.shape == (8, 3)


@pytest.mark.parametrize("kind", ["dssim", "dssim_half", "pixel_mse", "latent_mse"])
def test_world_model_cost_shapes_and_seed(kind):
    wm = tiny_world_model()
    ctx = torch.rand(1, 4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    goal = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    deltas = cem.decode(torch.rand(6, 3) * 2 - 1, cem.CEMConfig())
    costs = [world_model_cost(wm, ctx, goal, GoalDistance(kind), rollouts=2,
                              generator=torch.Generator().manual_seed(0))(deltas) for _ in range(2)]
    assert costs[0].shape == (6,) and torch.equal(costs[0], costs[1]) and torch.isfinite(costs[0]).all()


def test_world_model_cost_reads_given_views_instead_of_rollouts():
    """The perfect-world-model seam (eval/perfect.py): with ``imagine`` the cost scores those frames,
    so the candidate whose final view is the goal costs nothing, and no rollout draws noise."""
    wm = tiny_world_model()
    ctx = torch.rand(1, 4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    goal = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    goal_latent = wm.encode(goal[None, None])[0, 0]
    deltas = cem.decode(torch.rand(4, 3) * 2 - 1, cem.CEMConfig())  # (4, 8, 3)

    def imagine(d):  # candidate 2 ends at the goal's view, the others at noise
        latents = torch.randn(len(d), d.shape[1], *goal_latent.shape, generator=torch.Generator().manual_seed(2))
        latents[2, -1] = goal_latent
        return latents

    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    c = world_model_cost(wm, ctx, goal, GoalDistance("latent_mse"), rollouts=3, generator=gen, imagine=imagine)(deltas)
    assert c.shape == (4,) and float(c[2]) < 1e-6 and (c[[0, 1, 3]] > 0.1).all()
    assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize("kind", ["dssim", "dssim_half", "pixel_mse", "latent_mse"])
def test_goal_distance_is_zero_at_the_goal_only(kind):
    goal = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    other = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    d = GoalDistance(kind)(torch.cat([goal[None], other]), goal)
    assert d.shape == (3,) and abs(float(d[0])) < 1e-5 and (d[1:] > 0.01).all()


def test_temporal_distance_reads_the_last_context_frames_through_gnm():
    from planners.policy_common import builtin_policies

    torch.manual_seed(0)
    gnm_cls = builtin_policies()["gnm"]
    gnm = gnm_cls(gnm_cls.make_config("tiny")).eval()
    d = GoalDistance("temporal", policy=gnm)
    C = gnm.config.context_size
    assert d.frames == C and d.name == "GNM temporal distance (steps)"
    frames = torch.rand(3, C, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    goal = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(d(frames, goal), gnm.predict(frames, goal.expand(3, -1, -1, -1))["distance"])
    wm = tiny_world_model()
    ctx = torch.rand(1, 4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    deltas = cem.decode(torch.rand(5, 3) * 2 - 1, cem.CEMConfig())
    cost = world_model_cost(wm, ctx, goal, d, rollouts=2, generator=torch.Generator().manual_seed(0))(deltas)
    assert cost.shape == (5,) and torch.isfinite(cost).all()
    with pytest.raises(ValueError, match="needs a trained GNM"):
        GoalDistance("temporal")


def test_goal_distance_never_claims_lpips_without_weights():
    assert GoalDistance("auto").name == "MSE of autoencoder latents"
    with pytest.raises(ValueError, match="unknown goal distance"):
        GoalDistance("l2")


def test_world_model_planner_returns_a_plan_and_its_rollout():
    wm = tiny_world_model(sampler_steps=1)
    planner = WorldModelPlanner(wm, cem.CEMConfig(n_candidates=8, top_k=2), GoalDistance("dssim"), rollouts=1)
    ctx, goal = torch.rand(1, 4, 3, SIZE, SIZE), torch.rand(3, SIZE, SIZE)
    res = planner(ctx, goal, torch.Generator().manual_seed(0), imagine=True)
    assert res.waypoints.shape == (8, 3) and res.imagined.shape == (8, 3, SIZE, SIZE)
    assert res.cost_name == "1-SSIM (pixels)"


@pytest.fixture
def tiny_ckpt(tmp_path):
    wm = tiny_world_model()
    wm.save(tmp_path / "ckpt")
    return add_tiny_policies(tmp_path / "ckpt")


def _write(path, img):
    cv2.imwrite(str(path), img)
    return str(path)


def test_plan_cli_end_to_end(tiny_ckpt, tmp_path):
    out = tmp_path / "plan.json"
    rc = plan.main(["--goal", "examples/goal.png", "--ckpt", str(tiny_ckpt), "--candidates", "6", "--rollouts", "1",
                    "--steps", "1", "--json", str(out), "--figure", str(tmp_path / "plan.png")])
    assert rc == 0
    got = json.loads(out.read_text())
    assert set(got) >= {"method", "waypoints", "waypoints_m", "cost", "cost_name"}
    assert np.array(got["waypoints"]).shape == (8, 3)
    assert np.allclose(np.array(got["waypoints_m"])[:, :2], np.array(got["waypoints"])[:, :2] * 0.25, atol=1e-3)
    assert (tmp_path / "plan.png").stat().st_size > 1000


@pytest.mark.parametrize("case", ["missing", "corrupt", "gray", "method", "ckpt"])
def test_plan_cli_user_mistakes_are_one_line(case, tmp_path, capsys, tiny_ckpt):
    goal, args = "examples/goal.png", []
    if case == "missing":
        goal = str(tmp_path / "nope.png")
    elif case == "corrupt":
        goal = str(tmp_path / "bad.png")
        (tmp_path / "bad.png").write_bytes(b"not an image")
    elif case == "gray":
        goal = _write(tmp_path / "gray.png", np.zeros((64, 64), np.uint8))
    elif case == "method":
        args = ["--method", "teleport"]
    rc = plan.main(["--goal", goal, "--ckpt", str(tmp_path / "none" if case == "ckpt" else tiny_ckpt), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "\n" not in err and "Traceback" not in err


def test_tracking_controller_follows_waypoints_within_limits():
    from envs.sim import unicycle_step
    from planners.mpc import TrackingController

    ctrl = TrackingController()
    straight = np.array([[0.25 * k, 0.0, 0.0] for k in range(1, 9)])
    v, w = ctrl(straight)
    assert v > 0.8 and abs(w) < 1e-3
    ctrl.reset()
    left = np.array([[0.2 * k, 0.0125 * k * k, 0.1 * k] for k in range(1, 9)])
    v, w = ctrl(left)
    assert v > 0 and 0 < w <= 1.0 + 1e-6
    pose = np.zeros(3)
    for v_k, w_k in ctrl.commands:  # the whole QP solution drives to the goal
        pose = unicycle_step(pose, v_k, w_k, 0.25)
    assert np.linalg.norm(pose[:2] - left[-1, :2]) < 0.15


def test_numpy_qp_solver_matches_cvxpy():
    """The cvxpy-free solver solves the same QP: same commands over random waypoints, at the
    limits too, and over several calls (the smoothness term reads the last command)."""
    from planners.mpc import TrackingController

    rng = np.random.default_rng(0)
    a, b = TrackingController(), TrackingController(solver="numpy")
    hit = 0
    for _ in range(30):
        wp = np.cumsum(rng.normal(0.15, 0.25, (8, 3)) * [1, 1, 0.5], 0) * rng.uniform(0.3, 3)
        a(wp), b(wp)
        assert np.allclose(a.commands, b.commands, atol=2e-4), (a.commands, b.commands)
        hit += np.isclose(np.abs(b.commands), 1.0).any()
    assert hit >= 5  # some solutions sit on the speed or turn-rate limit
    with pytest.raises(ValueError, match="unknown QP solver"):
        TrackingController(solver="scipy")


def test_mpc_warm_starts_the_planner_and_returns_a_command():
    from planners.methods import PlanResult
    from planners.mpc import MPC, TrackingController

    seen = []

    class Planner:  # a stand-in that records its calls
        uses_memory = False

        def __call__(self, ctx, goal, generator=None, warm_start=None):
            seen.append((ctx.shape, warm_start))
            return PlanResult(torch.tensor([[k, 0.0, 0.0] for k in range(1, 9)]), mean=torch.zeros(3),
                              std=torch.ones(3))  # fmt: skip

    mpc = MPC(Planner(), TrackingController(), spacing=0.25)
    frame = np.zeros((16, 16, 3), np.uint8)
    mpc.reset(frame)
    (v, w), _ = mpc.act(frame, frame)
    mpc.act(frame, frame)
    assert seen[0] == ((1, 4, 3, 16, 16), None) and seen[1][1] is not None
    assert v > 0.5 and abs(w) < 1e-3


def test_mpc_replans_every_k_steps_and_tracks_the_plan_from_the_pose():
    from planners.methods import PlanResult
    from planners.mpc import MPC, TrackingController

    calls = []

    class Planner:  # a straight line ahead, 1 spacing unit per step
        uses_memory = False

        def __call__(self, ctx, goal, generator=None, warm_start=None):
            calls.append(1)
            return PlanResult(torch.tensor([[k, 0.0, 0.0] for k in range(1, 9)]))

    mpc = MPC(Planner(), TrackingController(solver="numpy"), spacing=0.25, replan_every=3)
    frame = np.zeros((16, 16, 3), np.uint8)
    mpc.reset(frame)
    planned = [mpc.act(frame, frame, pose=np.array([0.25 * k, 0.0, 0.0]))[1] is not None for k in range(7)]
    assert planned == [True, False, False, True, False, False, True] and len(calls) == 3
    # tracking from the pose: the robot turned 0.5 rad left of the plan's heading, so it turns back right
    mpc.reset(frame)
    mpc.act(frame, frame, pose=np.zeros(3))
    v, w = mpc.act(frame, frame, pose=np.array([0.25, 0.0, 0.5]))[0]
    assert w < -0.1 and v > 0
    # a remaining waypoint in the robot's frame: the plan's second waypoint, seen from the pose
    rest = mpc._remaining(np.array([0.25, 0.5, np.pi / 2]))
    np.testing.assert_allclose(rest[0], [-0.5, -0.25, -np.pi / 2], atol=1e-12)
    # without poses it cannot track, so it plans every step
    mpc.reset(frame)
    assert all(mpc.act(frame, frame)[1] is not None for _ in range(3))
    with pytest.raises(ValueError, match="replan_every"):
        MPC(Planner(), TrackingController(solver="numpy"), spacing=0.25, replan_every=0)


def test_navigate_rows_split_success_by_revisit():
    from eval.navigate import summarise

    eps = [{"success": s, "revisit": r, "spl": 0.5 * s, "collisions": c, "s_per_decision": 1.0}
           for s, r, c in [(True, True, 0), (False, True, 2), (True, False, 1), (True, False, 0)]]
    row = summarise("X", eps)
    assert row["success"] == 0.75 and row["revisit_success"] == 0.5 and row["nonrevisit_success"] == 1.0
    assert row["collisions"] == 0.75 and row["spl"] == 0.375 and row["episodes"] == 4
    assert np.isnan(summarise("X", eps[2:])["revisit_success"])


def test_navigate_runs_closed_loop_episodes(tiny_ckpt, tmp_path):
    from eval import navigate

    out = tmp_path / "nav.json"
    rc = navigate.main(["--methods", "NWM", "CoME", "--ckpt", str(tiny_ckpt), "--episodes", "2", "--max-steps", "2",
                        "--image-size", str(SIZE), "--candidates", "6", "--rollouts", "1", "--steps", "1",
                        "--json", str(out), "--gif-dir", str(tmp_path / "gifs"), "--gifs", "1"])
    assert rc == 0
    got = json.loads(out.read_text())
    rows = got["rows"]
    assert [r["method"] for r in rows] == ["NWM"] and rows[0]["episodes"] == 2
    assert 0 <= rows[0]["success"] <= 1 and (tmp_path / "gifs" / "NWM_0.gif").is_file()
    assert got["protocol"]["rollouts"] == 1 and got["protocol"]["candidates"] == 6  # the planner settings, kept



def test_navigate_with_a_perfect_world_model(tiny_ckpt, tmp_path, capsys):
    """--true-views: the world-model planner scores the simulator's views; the run says so, and a
    search it cannot wrap is one line."""
    from eval import navigate

    out = tmp_path / "nav.json"
    common = ["--methods", "NWM", "--ckpt", str(tiny_ckpt), "--episodes", "1", "--max-steps", "3", "--image-size",
              str(SIZE), "--rollouts", "1", "--proposals-nomad", "2", "--proposals-gnm", "2", "--refine", "2",
              "--true-views", "--replan-every", "1"]  # fmt: skip
    assert navigate.main([*common, "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["true_views"] is True and got["rows"][0]["episodes"] == 1
    assert got["episodes"]["NWM"][0]["decisions"] == got["episodes"]["NWM"][0]["steps"]  # a plan every step
    capsys.readouterr()
    assert navigate.main([*common, "--search", "paper"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seeded" in err

def test_navigate_slices_resume_into_the_same_table(tiny_ckpt, tmp_path):
    """Episodes split over two --first-episode runs into one --resume folder gather into the rows
    of one run over all of them; a finished folder is read back without planning anything."""
    from eval import navigate

    common = ["--methods", "NWM", "--ckpt", str(tiny_ckpt), "--max-steps", "2", "--image-size", str(SIZE),
              "--candidates", "6", "--rollouts", "1", "--steps", "1"]
    whole, keep = tmp_path / "whole.json", tmp_path / "keep"
    assert navigate.main([*common, "--episodes", "2", "--json", str(whole)]) == 0
    for k in (1, 0):
        assert navigate.main([*common, "--episodes", "1", "--first-episode", str(k), "--resume", str(keep)]) == 0
    assert sorted(p.name for p in (keep / "NWM").iterdir()) == ["0.json", "1.json"]
    gathered = tmp_path / "gathered.json"
    assert navigate.main([*common, "--episodes", "2", "--resume", str(keep), "--json", str(gathered)]) == 0
    a, b = json.loads(whole.read_text()), json.loads(gathered.read_text())
    for x, y in zip(a["episodes"]["NWM"], b["episodes"]["NWM"], strict=True):  # the QP solver's warm start
        assert {k: v for k, v in x.items() if k != "s_per_decision"} == pytest.approx(  # differs by ~1e-9
            {k: v for k, v in y.items() if k != "s_per_decision"}, rel=1e-6)
    assert [e["revisit"] for e in b["episodes"]["NWM"]] == [False, True]
    assert navigate.main([*common, "--episodes", "2", "--resume", str(keep), "--max-steps", "3"]) == 2
    # --kept-only: the table of what is kept so far, running nothing (episode 2 is not there)
    (keep / "NWM" / "0.json").unlink()
    partial = tmp_path / "partial.json"
    assert navigate.main([*common, "--episodes", "3", "--resume", str(keep), "--kept-only", "--json",
                          str(partial)]) == 0  # fmt: skip
    assert [e["episode"] for e in json.loads(partial.read_text())["episodes"]["NWM"]] == [1]
    assert sorted(p.name for p in (keep / "NWM").iterdir()) == ["1.json"]
    assert navigate.main([*common, "--kept-only"]) == 2

def test_model_benchmark_reports_both_precisions(tiny_ckpt):
    from eval.bench import bench_model

    rows = bench_model(tiny_ckpt, batch_train=2, batch_sample=3, steps=1, repeats=1)
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    assert all(r["train_s_per_step"] > 0 and r["predict_frames_per_s"] > 0 for r in rows)
    from eval.bench import bench_forward_batch

    forward = bench_forward_batch(tiny_ckpt, batches=(2, 4), repeats=1)
    assert [r["batch"] for r in forward] == [2, 4] and {r["precision"] for r in forward} <= {"fp32", "bf16"}
    assert all(r["s_per_forward"] > 0 and r["ms_per_sample"] > 0 for r in forward)


class _FanPolicy:
    """A stand-in NoMaD: sample b of a batch drives straight at heading (b - 2) * 0.3 rad."""

    def predict(self, context, goal, generator=None):
        B = context.shape[0]
        heading = (torch.arange(B, dtype=torch.float32) - 2) * 0.3
        step = torch.stack([heading.cos(), heading.sin(), torch.zeros(B)], 1)  # (B, 3)
        wp = step[:, None] * torch.arange(1, 9, dtype=torch.float32)[None, :, None]
        wp[..., 2] = heading[:, None]
        return {"waypoints": wp, "distance": None}


def test_ranking_planner_returns_the_cheapest_policy_sample():
    from planners.methods import RankingPlanner

    wm = tiny_world_model()
    scorer = WorldModelPlanner(wm, cem.CEMConfig(), GoalDistance("latent_mse"), rollouts=1)
    planner = RankingPlanner(_FanPolicy(), scorer, n=5)
    target = torch.tensor([8 * np.cos(0.3), 8 * np.sin(0.3)], dtype=torch.float32)  # the end of sample 3
    scorer.cost = lambda start, goal, gen: lambda d: (cem.waypoints_from_actions(d)[:, -1, :2] - target).norm(dim=1)
    ctx = torch.rand(1, 4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    res = planner(ctx, torch.rand(3, SIZE, SIZE), imagine=True)
    assert res.waypoints.shape == (8, 3) and torch.allclose(res.waypoints[-1, :2], target, atol=1e-5)
    assert res.cost == pytest.approx(0.0, abs=1e-5) and res.imagined.shape == (8, 3, SIZE, SIZE)
    assert planner.world_model is wm and not planner.uses_memory  # the scorer's, delegated
