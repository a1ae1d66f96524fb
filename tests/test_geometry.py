import math

import numpy as np
import pytest
import torch

from nav_come.core.geometry import (
    actions_from_waypoints,
    robot_to_world,
    se2_compose,
    se2_inverse,
    se2_relative,
    step_actions,
    waypoints_from_actions,
    world_to_robot,
    wrap_angle,
)

rng = np.random.default_rng(0)


def _random_poses(*shape):
    return np.concatenate([rng.normal(0, 3, (*shape, 2)), rng.uniform(-math.pi, math.pi, (*shape, 1))], -1)


@pytest.mark.parametrize("as_torch", [False, True])
def test_world_robot_round_trip_batched(as_torch):
    points, origin, yaw = rng.normal(0, 5, (4, 7, 2)), rng.normal(0, 5, (4, 2)), rng.uniform(-4, 4, (4,))
    if as_torch:
        points, origin, yaw = (torch.from_numpy(a) for a in (points, origin, yaw))
    local = world_to_robot(points, origin, yaw)  # (4, 7, 2)
    assert local.shape == (4, 7, 2) and type(local) is type(points)
    back = robot_to_world(local, origin, yaw)
    np.testing.assert_allclose(np.asarray(back), np.asarray(points), atol=1e-12)


def test_world_to_robot_hand_computed():
    # robot at (1, 1) facing +y (yaw pi/2): the world point (1, 2) is 1 m straight ahead
    local = world_to_robot(np.array([[1.0, 2.0], [0.0, 1.0]]), np.array([1.0, 1.0]), np.array(math.pi / 2))
    np.testing.assert_allclose(local, [[1.0, 0.0], [0.0, 1.0]], atol=1e-12)  # (0, 1) is 1 m to the left


@pytest.mark.parametrize("as_torch", [False, True])
def test_wrap_angle(as_torch):
    a = np.array([math.pi, -math.pi, 3 * math.pi, 0.5, -7.0])
    w = wrap_angle(torch.from_numpy(a) if as_torch else a)
    w = np.asarray(w)
    assert ((w >= -math.pi) & (w < math.pi)).all()
    np.testing.assert_allclose(w[:2], [-math.pi, -math.pi])
    assert abs(abs(w[2]) - math.pi) < 1e-9  # 3*pi is +-pi up to rounding
    np.testing.assert_allclose(np.cos(w), np.cos(a), atol=1e-12)
    np.testing.assert_allclose(np.sin(w), np.sin(a), atol=1e-12)


@pytest.mark.parametrize("as_torch", [False, True])
def test_se2_compose_inverse_relative(as_torch):
    a, b = _random_poses(5, 3), _random_poses(5, 3)
    if as_torch:
        a, b = torch.from_numpy(a), torch.from_numpy(b)
    identity = np.asarray(se2_compose(a, se2_inverse(a)))
    np.testing.assert_allclose(identity, np.zeros((5, 3, 3)), atol=1e-12)
    rel = se2_relative(a, b)
    np.testing.assert_allclose(np.asarray(se2_compose(a, rel)), np.asarray(b), atol=1e-12)
    # the translation part of the relative pose is world_to_robot of b's position
    local = world_to_robot(b[..., None, :2], a[..., :2], a[..., 2])[..., 0, :]
    np.testing.assert_allclose(np.asarray(rel)[..., :2], np.asarray(local), atol=1e-12)


@pytest.mark.parametrize("as_torch", [False, True])
def test_waypoints_actions_round_trip(as_torch):
    actions = np.concatenate([rng.normal(0, 1, (3, 8, 2)), rng.uniform(-0.5, 0.5, (3, 8, 1))], -1)
    if as_torch:
        actions = torch.from_numpy(actions)
    waypoints = waypoints_from_actions(actions)
    np.testing.assert_allclose(np.asarray(waypoints[..., -1, :2]), np.asarray(actions[..., :2].sum(-2)), atol=1e-12)
    np.testing.assert_allclose(np.asarray(actions_from_waypoints(waypoints)), np.asarray(actions), atol=1e-12)


def test_step_actions_compose_back_to_the_path():
    path = _random_poses(6)  # (6, 3)
    steps = step_actions(path)  # (5, 3)
    pose = path[0]
    for k in range(5):
        pose = se2_compose(pose, steps[k])
        np.testing.assert_allclose(pose, path[k + 1], atol=1e-12)
