"""Collision penalty: view clearance labels, the clearance head and its place in the CEM cost."""

import numpy as np
import pytest
import torch
from test_world_model import SIZE, tiny_world_model

from nav_come.core.checkpoint import save_checkpoint_files
from nav_come.core.data import DataFormatError
from planners import cem
from planners.collision import FLOOR_COST, ClearanceConfig, ClearanceHead, load_clearance_head, view_clearance, world_of
from planners.cost import GoalDistance, world_model_cost
from planners.methods import WorldModelPlanner

RES = 0.1


def _wall_grid():
    """A 4 m x 4 m grid, origin (-2, -2), with one wall column at x = 1.0 m."""
    occ = np.zeros((40, 40), np.uint8)
    occ[:, 30] = 1  # cells covering x in [1.0, 1.1)
    return occ


def test_view_clearance_against_hand_computed_cases():
    occ = _wall_grid()
    poses = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, np.pi], [0.5, 0.0, 0.0], [0.0, 0.0, np.pi / 2]])
    d = view_clearance(occ, RES, (-2.0, -2.0), poses, max_range=2.0)
    assert d[0] == pytest.approx(1.0, abs=RES)  # facing the wall 1 m ahead
    assert d[1] == 2.0  # facing away: nothing in view within range
    assert d[2] == pytest.approx(0.5, abs=RES)
    # facing +y, the wall is only seen at the edge of the 90 degree view: 1 m / cos(45 deg) away
    assert d[3] == pytest.approx(np.sqrt(2.0), abs=2 * RES)


def test_world_of_reads_collected_names_and_refuses_others():
    assert world_of("maze_846567_02") == ("maze", 846567)
    with pytest.raises(DataFormatError, match="<family>_<seed>_<k>"):
        world_of("recon_run_2019")


def _head(margin=0.5):
    return ClearanceHead(ClearanceConfig(latent_channels=4, latent_size=8, widths=(8, 16), hidden=16, margin=margin))


def test_risk_is_the_mean_shortfall_below_the_margin():
    head = _head(margin=0.5)
    clear = torch.tensor([0.1, 0.5, 1.5, 0.3, 0.2, 2.0])  # (B=2) x (K=3) predicted clearances
    head.forward = lambda z: clear[: len(z)]
    risk = head.risk(torch.zeros(2, 3, 4, 8, 8))
    assert torch.allclose(risk, torch.tensor([0.4 / 3, 0.5 / 3]))


def test_breach_is_the_lowest_clearance_below_the_floor():
    head = _head()
    clear = torch.tensor([0.1, 0.5, 1.5, 0.3, 0.4, 2.0])  # (B=2) x (K=3) predicted clearances
    head.forward = lambda z: clear[: len(z)]
    breach = head.breach(torch.zeros(2, 3, 4, 8, 8), floor=0.35)
    assert torch.allclose(breach, torch.tensor([0.25, 0.05]))
    assert not head.breach(torch.zeros(2, 3, 4, 8, 8), floor=0.1).any()


def test_clearance_head_round_trips_and_stays_in_range(tmp_path):
    head = _head().eval()
    z = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = head(z)
    assert out.shape == (5,) and bool(((out >= 0) & (out <= head.config.max_range)).all())
    save_checkpoint_files(tmp_path, head, "clearance", {"seed": 0})
    again = load_clearance_head(tmp_path)
    assert torch.equal(again(z), out) and again.config == head.config


class _Risk:
    """A stand-in head: the risk of a rollout is its number (row index), so the averaging shows;
    rollouts 0 and 1 (the first candidate's) breach any floor by 0.1 m."""

    def risk(self, latents):
        return torch.arange(len(latents), dtype=torch.float32)

    def breach(self, latents, floor):
        return (torch.arange(len(latents)) < 2).float() * 0.1


def test_collision_penalty_adds_weight_times_mean_risk_over_rollouts():
    wm = tiny_world_model()
    ctx = torch.rand(1, 4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    goal = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    deltas = cem.decode(torch.rand(3, 3) * 2 - 1, cem.CEMConfig())

    def cost(**kw):
        f = world_model_cost(wm, ctx, goal, GoalDistance("latent_mse"), rollouts=2,
                             generator=torch.Generator().manual_seed(0), **kw)  # fmt: skip
        return f(deltas)

    plain, off = cost(), cost(collision=_Risk(), collision_weight=0.0)
    on = cost(collision=_Risk(), collision_weight=2.0)
    assert torch.equal(plain, off)
    # rollouts (0, 1), (2, 3), (4, 5) of the three candidates: mean risk 0.5, 2.5, 4.5
    assert torch.allclose(on - plain, 2.0 * torch.tensor([0.5, 2.5, 4.5]))
    floor = cost(collision=_Risk(), clearance_floor=0.3)  # the constraint alone
    assert torch.allclose(floor - plain, torch.tensor([FLOOR_COST * 0.1, 0.0, 0.0]))


def test_planner_names_the_penalties_in_its_cost():
    wm = tiny_world_model()
    p = WorldModelPlanner(wm, cem.CEMConfig(n_candidates=8), GoalDistance("latent_mse"), rollouts=1,
                          length_weight=0.1, collision=_head(), collision_weight=3.0)  # fmt: skip
    assert p.cost_name == "MSE of autoencoder latents + 0.1 x path length (spacing units) + 3 x collision risk (m)"
    floor = WorldModelPlanner(wm, cem.CEMConfig(), GoalDistance("latent_mse"), collision=_head(), clearance_floor=0.3)
    assert floor.cost_name == "MSE of autoencoder latents, clearance >= 0.3 m"
    assert WorldModelPlanner(wm, cem.CEMConfig(), GoalDistance("latent_mse")).cost_name == "MSE of autoencoder latents"
