"""Relative poses and actions of a trajectory, in the NWM convention (docs/design.md §2).

A pose of frame k seen from frame t is ``(R(-yaw_t) (p_k - p_t) / spacing,
wrap(yaw_k - yaw_t))``: x forward, y left, in spacing units (metres divided by the
dataset's ``metric_waypoint_spacing``), yaw in radians. All pose maths comes from
:mod:`nav_come.core.geometry`. Inputs are a trajectory's world-frame ``position`` (T, 2)
in metres and ``yaw`` (T,) in radians.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from nav_come.core.geometry import se2_relative, step_actions, wrap_angle


def poses(position: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """World poses (T, 3) = (x, y, yaw) from position (T, 2) and yaw (T,)."""
    position, yaw = np.asarray(position, np.float64), np.asarray(yaw, np.float64)
    if position.ndim != 2 or position.shape[1] != 2 or yaw.shape != position.shape[:1]:
        raise ValueError(f"need position (T, 2) and yaw (T,), got {position.shape} and {yaw.shape}")
    return np.concatenate([position, yaw[:, None]], -1)


def _to_spacing_units(rel: np.ndarray, spacing: float) -> np.ndarray:
    if not spacing > 0:
        raise ValueError(f"spacing must be > 0 metres per step, got {spacing}")
    rel[..., :2] /= spacing
    return rel


def relative_poses(
    position: np.ndarray, yaw: np.ndarray, t: int, offsets: Sequence[int] | np.ndarray, spacing: float
) -> np.ndarray:
    """Poses of frames ``t + offsets`` in the robot frame of frame ``t``.

    offsets: (K,) ints, may be negative (past frames) or 0. Returns (K, 3) float64:
    (x, y) in spacing units, yaw wrapped to [-pi, pi).
    """
    world = poses(position, yaw)  # (T, 3)
    idx = t + np.asarray(offsets, dtype=np.int64)  # (K,)
    if not 0 <= t < len(world) or (idx < 0).any() or (idx >= len(world)).any():
        raise IndexError(f"frames t={t} + offsets {np.asarray(offsets).tolist()} fall outside 0..{len(world) - 1}")
    return _to_spacing_units(se2_relative(world[t], world[idx]), spacing)  # (K, 3)


def one_step_actions(position: np.ndarray, yaw: np.ndarray, spacing: float) -> np.ndarray:
    """One-step actions: pose of frame k+1 in the frame of frame k. Returns (T-1, 3)."""
    return _to_spacing_units(step_actions(poses(position, yaw)), spacing)  # (T-1, 3)


def gt_waypoints(position: np.ndarray, yaw: np.ndarray, t: int, horizon: int = 8, *, spacing: float) -> np.ndarray:
    """Ground-truth waypoints: frames t+1..t+horizon in the frame of t, spacing units.

    Returns (horizon, 3). This is what ATE/RPE compare a planner's waypoints against.
    """
    return relative_poses(position, yaw, t, np.arange(1, horizon + 1), spacing)


def revisit_mask(
    position: np.ndarray,
    yaw: np.ndarray,
    min_gap: int = 16,
    max_dist: float = 0.5,
    max_yaw: float = math.radians(30),
    chunk: int = 256,
) -> np.ndarray:
    """Which frames revisit an old view. Returns bool (T,).

    Frame k is a revisit if some frame j < k - min_gap lies within ``max_dist`` metres
    and ``max_yaw`` radians of it (both inclusive). O(T^2) work, done ``chunk`` rows at a
    time to bound memory.
    """
    world = poses(position, yaw)  # (T, 3)
    T = len(world)
    out = np.zeros(T, dtype=bool)
    for a in range(min_gap + 1, T, chunk):
        b = min(a + chunk, T)
        n_old = b - 1 - min_gap  # frames j that can count for some row in [a, b)
        rows, old = world[a:b], world[:n_old]  # (R, 3), (J, 3)
        d2 = ((rows[:, None, :2] - old[None, :, :2]) ** 2).sum(-1)  # (R, J)
        dyaw = np.abs(wrap_angle(rows[:, None, 2] - old[None, :, 2]))  # (R, J)
        early = np.arange(n_old)[None, :] < (np.arange(a, b) - min_gap)[:, None]  # (R, J): j < k - min_gap
        out[a:b] = (early & (d2 <= max_dist**2) & (dyaw <= max_yaw)).any(-1)
    return out
