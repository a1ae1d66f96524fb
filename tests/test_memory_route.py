"""planners/memory_route.py: route distances over the driven frames, the goal's place, its cost term."""

import math

import numpy as np
import pytest
import torch
from test_world_model import SIZE, tiny_world_model

from nav_come.memory_bank import EpisodeMemory
from planners import cem
from planners.cost import GoalDistance, world_model_cost
from planners.memory_route import MemoryRoute, RoutePolicyPlanner, route_distances
from planners.methods import WorldModelPlanner


def _out_and_back():
    """Out along x for 4 m (frames 0-4, 1 m apart), up 2 m to (4, 2) and back along y = 2 to (0, 2)."""
    xs = [(x, 0.0) for x in range(5)] + [(4.0, 1.0)] + [(x, 2.0) for x in range(4, -1, -1)]
    return np.array([[x, y, 0.0] for x, y in xs])


def test_route_distances_follow_the_drive_and_join_nearby_frames():
    poses = _out_and_back()
    d = route_distances(poses, goal=0, link=0.5)
    assert np.allclose(d[:5], [0, 1, 2, 3, 4]) and d[5] == pytest.approx(5.0)
    assert d[-1] == pytest.approx(10.0)  # (0, 2) is 2 m from the goal in a straight line, 10 m along the drive
    # frames 2 m apart (the two legs) are linked when link allows: (0, 2) is then 2 m away
    assert route_distances(poses, goal=0, link=2.0)[-1] == pytest.approx(2.0)


def test_plan_value_is_the_route_from_the_nearest_way_onto_it_and_off_without_a_match():
    poses = _out_and_back()
    latents = torch.arange(len(poses), dtype=torch.float32)[:, None, None, None].expand(-1, 4, 2, 2).contiguous()
    goal = latents[0]
    route = MemoryRoute(1.0, link=0.5)
    assert route.locate(latents, goal + 0.1) == 0
    value = route.plan_value(latents, poses, goal)
    ends = np.array([[4.0, 0.0], [0.0, 2.5], [2.0, 1.0]])
    assert np.allclose(value(ends), [4.0, 10.5, 3.0])  # (2, 1): 1 m onto frame 2, then 2 m along
    assert MemoryRoute(1.0, max_match=0.5).plan_value(latents, poses, goal - 3.0) is None
    with pytest.raises(ValueError, match="route weight"):
        MemoryRoute(-1.0)


def test_route_term_adds_its_weight_per_metre_to_the_world_model_cost():
    wm = tiny_world_model()
    T = 12
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(1, T, 3, SIZE, SIZE, generator=g)
    latents = wm.encode(frames)[0]
    poses = np.stack([np.arange(T) * 0.25, np.zeros(T), np.zeros(T)], 1)  # a straight drive along x
    memory = EpisodeMemory(latents, poses, spacing=0.25)
    goal = frames[0, 0]  # the first frame: 2.75 m behind the robot along the route
    deltas = cem.decode(torch.rand(3, 3, generator=g) * 2 - 1, cem.CEMConfig())

    def cost(route=None):
        f = world_model_cost(wm, memory, goal, GoalDistance("latent_mse"), rollouts=1,
                             generator=torch.Generator().manual_seed(0), route=route)  # fmt: skip
        return f(deltas)

    plain, on = cost(), cost(MemoryRoute(2.0, max_match=1e9))
    assert torch.equal(cost(MemoryRoute(0.0)), plain)
    from nav_come.core.geometry import waypoints_from_actions

    end = waypoints_from_actions(deltas)[:, -1].double().numpy() * [0.25, 0.25, 1.0]
    world = end[:, :2] + poses[-1, :2]  # the robot faces +x at the last pose
    xy = poses[:, :2]
    straight = np.linalg.norm(world[:, None] - xy[None], axis=-1)  # (3, T); the route from frame n is x_n
    near = np.where(straight <= 0.5, straight + xy[:, 0][None], np.inf).min(1)
    nearest = straight.min(1) + xy[straight.argmin(1), 0]
    expect = np.where(np.isfinite(near), near, nearest)
    assert torch.allclose(on - plain, 2.0 * torch.from_numpy(expect).to(plain), atol=1e-5)


def test_a_planner_with_a_route_observes_the_episode_and_names_the_term():
    p = WorldModelPlanner(tiny_world_model(), cem.CEMConfig(n_candidates=8), GoalDistance("latent_mse"),
                          route=MemoryRoute(0.5))  # fmt: skip
    assert p.uses_memory and p.cost_name.endswith("+ 0.5 x route distance to where the goal was seen (m)")
    off = WorldModelPlanner(tiny_world_model(), cem.CEMConfig(n_candidates=8), GoalDistance("latent_mse"))
    assert not off.uses_memory
    p.observe(torch.rand(5, 3, SIZE, SIZE), np.zeros((5, 3)))
    assert p.history is not None and len(p.history) == 5 and math.isfinite(float(p.history.latents.sum()))


class _Samples:
    """A stand-in sampling policy: sample i ends i metres along +x (4 waypoints, spacing units of 0.25 m)."""

    class config:
        image_size, context_size = SIZE, 4

    def predict(self, context, goal, generator=None):
        n = len(context)
        x = torch.arange(n, dtype=torch.float32)[:, None] * torch.linspace(0.25, 1.0, 4)[None] * 4  # (n, 4)
        return {"waypoints": torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], -1)}


def test_route_policy_picks_the_sample_that_ends_nearest_the_goal_along_the_route():
    wm = tiny_world_model()
    T = 12
    frames = torch.rand(T, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    poses = np.stack([np.arange(T) * 0.5, np.zeros(T), np.zeros(T)], 1)  # a straight drive along x, 5.5 m
    planner = RoutePolicyPlanner(_Samples(), wm.ae, MemoryRoute(1.0, max_match=1e-6), spacing=0.25, n=4)
    ctx = frames[None, -4:]
    assert planner(ctx, frames[3]).note.startswith("goal not in memory")  # nothing observed yet
    planner.observe(frames[:6], poses[:6])
    planner.observe(frames[6:], poses[6:], append=True)
    assert planner.uses_memory and len(planner.latents) == T
    # the goal is the frame at x = 1.5 m; the robot at x = 5.5 m faces +x, so sample 0 (staying) ends nearest
    assert planner(ctx, frames[3]).waypoints[-1, 0] == 0
    planner.poses[:, 2] = math.pi  # now it faces back towards the goal: the longest sample, 3 m, ends 1 m short
    plan = planner(ctx, frames[3])
    assert plan.waypoints[-1, 0] == 12 and plan.cost == pytest.approx(1.0)
    planner.reset()
    assert planner.latents is None
