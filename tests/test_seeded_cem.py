"""Proposal-seeded CEM (``planners.cem.seeded_plan``) and the planners that search with it."""

import math

import pytest
import torch
from test_seams import ckpt  # noqa: F401  (the fixture: tiny world model, experts, GNM, NoMaD)
from test_world_model import SIZE

from nav_come.core.geometry import waypoints_from_actions
from planners import cem
from planners.methods import load_method
from planners.planner import RankingPlanner

PRIOR = cem.CEMConfig()


def target_cost(target: torch.Tensor):
    """Cost: distance of a candidate's final waypoint to ``target`` (x, y)."""
    return lambda d: (waypoints_from_actions(d)[:, -1, :2] - target).norm(dim=1)


def test_refining_finds_what_the_first_population_misses():
    target = torch.tensor([6.0, 3.0])
    proposals = torch.zeros(4, 8, 3)
    proposals[:, :, 0] = torch.linspace(0.2, 0.8, 4)[:, None]  # straight ahead, too short
    first = cem.seeded_plan(target_cost(target), proposals, cem.SeededConfig(PRIOR, 0, 16, 2, iterations=1),
                            torch.Generator().manual_seed(0))  # fmt: skip
    refined = cem.seeded_plan(target_cost(target), proposals, cem.SeededConfig(PRIOR, 0, 64, 4, iterations=6),
                              torch.Generator().manual_seed(0))  # fmt: skip
    assert refined.cost < first.cost - 0.5  # the per-step refinement turns towards the target
    assert (refined.waypoints[-1, :2] - target).norm() == pytest.approx(refined.cost, abs=1e-5)
    assert refined.cost == pytest.approx(float(target_cost(target)(refined.deltas[None])))  # the plan is the best seen
    again = cem.seeded_plan(target_cost(target), proposals, cem.SeededConfig(PRIOR, 0, 64, 4, iterations=6),
                            torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(again.waypoints, refined.waypoints)  # deterministic under the seed


def test_prior_draws_alone_and_the_mean_plan():
    res = cem.seeded_plan(target_cost(torch.tensor([2.0, 0.0])), torch.zeros(0, 8, 3),
                          cem.SeededConfig(PRIOR, 24, 8, 4, iterations=2, select="mean"))  # fmt: skip
    assert res.deltas.shape == (8, 3) and torch.equal(res.deltas, res.mean)
    with pytest.raises(ValueError, match="proposals or prior draws"):
        cem.seeded_plan(target_cost(torch.zeros(2)), torch.zeros(0, 8, 3), cem.SeededConfig(PRIOR, 0))
    with pytest.raises(ValueError, match=r"proposals must be \(P, 8, 3\)"):
        cem.seeded_plan(target_cost(torch.zeros(2)), torch.zeros(3, 5, 3), cem.SeededConfig(PRIOR))


def test_clamping_leaves_valid_steps_as_they_are():
    d = torch.tensor([[[1.0, -2.0, 0.3], [9.0, -7.0, 4.0], [-3.0, 0.0, -math.pi]]])
    out = cem.clamp_deltas(d, PRIOR)
    assert torch.equal(out[0, 0], d[0, 0]) and torch.equal(out[0, 2, 2], d[0, 2, 2])
    assert out[0, 1, :2].tolist() == [5.0, -4.0] and out[0, 2, 0] == -2.5
    assert out[0, 1, 2] == pytest.approx(4.0 - 2 * math.pi)


def test_ranking_is_the_one_iteration_special_case(ckpt):  # noqa: F811
    """Seeded with 32 NoMaD samples, no prior draws, one iteration, the best: NoMaD+NWM's plan."""
    small = {"distance": "dssim", "rollouts": 1, "precision": "fp32"}
    ranker = load_method("nomad+nwm", ckpt, **small)
    assert isinstance(ranker, RankingPlanner) and ranker.n == 32
    seeded = load_method("nwm", ckpt, search="seeded", proposals_nomad=32, proposals_gnm=0, prior_draws=0,
                         seeded_iterations=1, **small)  # fmt: skip
    ctx, goal = torch.rand(1, 4, 3, SIZE, SIZE), torch.rand(3, SIZE, SIZE)
    a = ranker(ctx, goal, torch.Generator().manual_seed(3))
    b = seeded(ctx, goal, torch.Generator().manual_seed(3))
    assert torch.allclose(a.waypoints, b.waypoints, atol=1e-5) and a.cost == pytest.approx(b.cost, rel=1e-6)


@pytest.mark.parametrize("method", ["nwm", "come"])
def test_every_world_model_method_can_search_seeded(ckpt, method):  # noqa: F811
    planner = load_method(method, ckpt, search="seeded", proposals_nomad=4, proposals_gnm=2, prior_draws=4,
                          refine=4, seeded_iterations=2, distance="dssim", rollouts=1, precision="fp32")  # fmt: skip
    calls = []
    cost = planner.cost
    planner.cost = lambda *a: (lambda f: lambda d: calls.append(len(d)) or f(d))(cost(*a))
    res = planner(torch.rand(1, 4, 3, SIZE, SIZE), torch.rand(3, SIZE, SIZE), torch.Generator().manual_seed(0))
    assert res.waypoints.shape == (8, 3) and calls == [4 + 2 + 4, 1 + 4]  # proposals + prior, best + refined


def test_the_paper_protocol_row_keeps_nwm_cem(ckpt):  # noqa: F811
    from eval.ate_rpe import table_labels

    paper = load_method("NWM (paper protocol)", ckpt, search="seeded", distance="dssim", rollouts=1)
    assert paper.seeded is None and paper.proposer is None  # always NWM's CEM from its prior
    assert load_method("nwm", ckpt, search="seeded", distance="dssim", rollouts=1).seeded is not None
    assert table_labels(["nwm-paper", "CoME", "gnm"]) == ["NWM (paper protocol)", "CoME", "GNM"]
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['foo'\]"):
        table_labels(["foo"])
