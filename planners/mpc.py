"""Receding-horizon control: plan waypoints from images, track them with a small QP.

``TrackingController`` turns the planner's waypoints (robot frame, metres) into
unicycle commands ``(v, w)`` over a short horizon by a quadratic program in
cvxpy: track the waypoints and their headings, respect the speed and turn-rate
limits, and keep the commands smooth. The unicycle is linearised about a
heading profile (the previous solution's), which makes the problem a QP; two
such passes are enough at these horizons. The problem is built once with
``cp.Parameter``s (DPP), so each re-solve only swaps numbers.

``MPC`` re-plans at every step from the frames the robot actually sees,
warm-starting the CEM from the previous plan, and returns the first command.
"""

from __future__ import annotations

from collections import deque

import cvxpy as cp
import numpy as np
import torch

from nav_come.geometry import wrap_angle


class TrackingController:
    """QP tracking of K waypoints spaced ``dt`` apart; returns the first command (v m/s, w rad/s)."""

    def __init__(self, horizon: int = 8, dt: float = 0.25, v_max: float = 1.0, w_max: float = 1.0,
                 heading_weight: float = 0.3, smooth_weight: float = 0.05, passes: int = 2):
        self.K, self.dt, self.passes = horizon, dt, passes
        self.v, self.w = cp.Variable(horizon), cp.Variable(horizon)
        self.target = cp.Parameter((horizon, 2))  # waypoints, metres
        self.target_yaw = cp.Parameter(horizon)
        self.cos, self.sin = cp.Parameter(horizon), cp.Parameter(horizon)  # linearisation headings
        self.prev = cp.Parameter(2)  # last command, for smoothness
        lower = np.tril(np.ones((horizon, horizon)))  # cumulative sums as a matrix: DPP-friendly
        x = lower @ cp.multiply(self.cos, self.v) * dt
        y = lower @ cp.multiply(self.sin, self.v) * dt
        yaw = lower @ self.w * dt
        track = cp.sum_squares(x - self.target[:, 0]) + cp.sum_squares(y - self.target[:, 1])
        dv = cp.hstack([self.v[:1] - self.prev[:1], cp.diff(self.v)])
        dw = cp.hstack([self.w[:1] - self.prev[1:], cp.diff(self.w)])
        cost = track + heading_weight * cp.sum_squares(yaw - self.target_yaw)
        cost += smooth_weight * (cp.sum_squares(dv) + cp.sum_squares(dw))
        limits = [cp.abs(self.v) <= v_max, cp.abs(self.w) <= w_max]
        self.problem = cp.Problem(cp.Minimize(cost), limits)
        self.w_max = w_max
        self.last = np.zeros(2)

    def reset(self) -> None:
        self.last = np.zeros(2)

    def __call__(self, waypoints: np.ndarray) -> tuple[float, float]:
        """waypoints (K', 3): x, y in metres and yaw in radians, robot frame; K' >= 1 is resampled to K."""
        wp = np.asarray(waypoints, float)
        wp = np.vstack([wp, np.repeat(wp[-1:], max(0, self.K - len(wp)), 0)])[: self.K]
        self.target.value, self.prev.value = wp[:, :2], self.last
        self.target_yaw.value = np.unwrap(np.r_[0.0, wp[:, 2]])[1:]
        # first linearisation: turn towards each waypoint as fast as the limit allows
        bearing = np.unwrap(np.r_[0.0, np.arctan2(*(np.diff(np.vstack([[0, 0], wp[:, :2]]), axis=0)).T[::-1])])[1:]
        cap = self.w_max * self.dt * np.arange(1, self.K + 1)
        heading = np.clip(bearing, -cap, cap)
        for _ in range(self.passes):
            self.cos.value, self.sin.value = np.cos(heading), np.sin(heading)
            self.problem.solve(warm_start=True)
            if self.v.value is None:  # infeasible cannot happen with box limits; be safe anyway
                return 0.0, 0.0
            heading = np.r_[0.0, np.cumsum(self.w.value)[:-1] * self.dt] + self.w.value * self.dt / 2
        self.last = np.array([self.v.value[0], self.w.value[0]])
        return float(self.last[0]), float(self.last[1])


class MPC:
    """Plan from the last frames, track the plan, repeat; planner state is warm-started."""

    def __init__(self, planner, controller: TrackingController, spacing: float, context: int = 4):
        self.planner, self.controller, self.spacing = planner, controller, spacing
        self.frames: deque = deque(maxlen=context)
        self.previous = None

    def reset(self, first_frame: np.ndarray, pose=None, history: tuple | None = None) -> None:
        """Start an episode: the context is the first frame repeated.

        A memory-carrying planner (one with ``observe``) is given the frames and world
        poses seen before the episode (``history = (frames (T, H, W, 3), poses (T, 3))``)
        and the first frame with its ``pose``.
        """
        self.frames.clear()
        for _ in range(self.frames.maxlen):
            self.frames.append(first_frame)
        self.previous = None
        self.controller.reset()
        if hasattr(self.planner, "observe") and pose is not None:
            frames, poses = history if history is not None else (np.zeros((0, *first_frame.shape), np.uint8),
                                                                 np.zeros((0, 3)))
            self.planner.observe(np.concatenate([frames, first_frame[None]]), np.vstack([poses, pose]))

    def act(self, frame: np.ndarray, goal: np.ndarray, generator: torch.Generator | None = None, pose=None,
            first: bool = False):
        """frame, goal: uint8 (H, W, 3); pose: the frame's world pose, fed to a memory-carrying
        planner (skipped for the first frame, which ``reset`` observed). Returns ((v, w), plan)."""
        self.frames.append(frame)
        if hasattr(self.planner, "observe") and pose is not None and not first:
            self.planner.observe(frame[None], np.asarray(pose)[None], append=True)
        ctx = torch.from_numpy(np.stack(self.frames)).float().div(255).movedim(-1, -3)[None]  # (1, C, 3, H, W)
        g = torch.from_numpy(goal).float().div(255).movedim(-1, -3)  # (3, H, W)
        plan = self.planner(ctx, g, generator, warm_start=self.previous)
        self.previous = plan if plan.mean is not None else None
        wp = plan.waypoints.numpy().astype(float)
        wp_m = np.concatenate([wp[:, :2] * self.spacing, wrap_angle(wp[:, 2:])], 1)
        return self.controller(wp_m), plan
