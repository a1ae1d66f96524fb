"""The one pose convention of the project.

Axes: x forward, y left, z up. Yaw is counter-clockwise about z, in radians.
A pose is ``(x, y, yaw)``; a world frame point ``p`` seen from a robot at pose
``(o, yaw)`` has robot-frame coordinates ``R(-yaw) @ (p - o)``.

Every function works on NumPy arrays and on torch tensors, and broadcasts over
leading batch dimensions. Every other module imports its pose maths from here.
"""

from __future__ import annotations

import math

import numpy as np

try:  # torch is optional here so that the simulator can import this module alone
    import torch
except ImportError:  # pragma: no cover
    torch = None

PI = math.pi


def _lib(x):
    return torch if torch is not None and isinstance(x, torch.Tensor) else np


def wrap_angle(a):
    """Wrap angles to [-pi, pi). ``wrap_angle(pi) == -pi``."""
    return (a + PI) % (2 * PI) - PI


def rotation(yaw):
    """Rotation matrices R(yaw), shape (..., 2, 2), mapping robot axes to world axes."""
    xp = _lib(yaw)
    c, s = xp.cos(yaw), xp.sin(yaw)
    return xp.stack([xp.stack([c, -s], -1), xp.stack([s, c], -1)], -2)


def world_to_robot(points, origin, yaw):
    """World points into the frame of a robot at ``origin`` with heading ``yaw``.

    points: (..., N, 2); origin: (..., 2); yaw: (...). Returns (..., N, 2).
    """
    xp = _lib(points)
    delta = points - origin[..., None, :]  # (..., N, 2)
    c, s = xp.cos(yaw)[..., None], xp.sin(yaw)[..., None]
    # R(-yaw) @ delta
    return xp.stack([c * delta[..., 0] + s * delta[..., 1], -s * delta[..., 0] + c * delta[..., 1]], -1)


def robot_to_world(points, origin, yaw):
    """Inverse of :func:`world_to_robot`. points: (..., N, 2) in the robot frame."""
    xp = _lib(points)
    c, s = xp.cos(yaw)[..., None], xp.sin(yaw)[..., None]
    x, y = points[..., 0], points[..., 1]
    return xp.stack([c * x - s * y, s * x + c * y], -1) + origin[..., None, :]


def se2_compose(a, b):
    """Pose ``a ∘ b``: ``b`` is expressed in the frame of ``a``. (..., 3) each."""
    xp = _lib(a)
    c, s = xp.cos(a[..., 2]), xp.sin(a[..., 2])
    x = a[..., 0] + c * b[..., 0] - s * b[..., 1]
    y = a[..., 1] + s * b[..., 0] + c * b[..., 1]
    return xp.stack([x, y, wrap_angle(a[..., 2] + b[..., 2])], -1)


def se2_inverse(a):
    """Inverse pose: ``se2_compose(a, se2_inverse(a)) == 0``. (..., 3)."""
    xp = _lib(a)
    c, s = xp.cos(a[..., 2]), xp.sin(a[..., 2])
    x = -(c * a[..., 0] + s * a[..., 1])
    y = -(-s * a[..., 0] + c * a[..., 1])
    return xp.stack([x, y, wrap_angle(-a[..., 2])], -1)


def se2_relative(a, b):
    """Pose of ``b`` in the frame of ``a``: ``inverse(a) ∘ b``. (..., 3)."""
    return se2_compose(se2_inverse(a), b)


def waypoints_from_actions(actions):
    """Cumulative sum of per-step deltas, all in the robot frame at the start.

    This is the NWM/GNM planning convention: action k is ``w_k - w_{k-1}`` with
    ``w_0 = 0``, expressed in the start frame (not re-rotated at every step), and
    the yaw channel is the wrapped yaw increment.
    actions: (..., K, 3) -> waypoints (..., K, 3).
    """
    xp = _lib(actions)
    cum = xp.cumsum(actions, -2)
    return xp.concatenate([cum[..., :2], wrap_angle(cum[..., 2:])], -1)


def actions_from_waypoints(waypoints):
    """Inverse of :func:`waypoints_from_actions`. (..., K, 3) -> (..., K, 3)."""
    xp = _lib(waypoints)
    zero = xp.zeros_like(waypoints[..., :1, :])
    delta = waypoints - xp.concatenate([zero, waypoints[..., :-1, :]], -2)
    return xp.concatenate([delta[..., :2], wrap_angle(delta[..., 2:])], -1)


def step_actions(poses):
    """Per-step motions: pose k in the frame of pose k-1, for a path of poses.

    poses: (..., K+1, 3) starting with the current pose. Returns (..., K, 3).
    This is what a world model conditioned on one-step robot-frame motion needs
    when it rolls a path out with a sliding context.
    """
    return se2_relative(poses[..., :-1, :], poses[..., 1:, :])
