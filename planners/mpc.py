"""Receding-horizon control: plan waypoints from images, track them with a small QP.

``TrackingController`` turns the planner's waypoints (robot frame, metres) into
unicycle commands ``(v, w)`` over a short horizon by a quadratic program in
cvxpy: track the waypoints and their headings, respect the speed and turn-rate
limits, and keep the commands smooth. The unicycle is linearised about a
heading profile (the previous solution's), which makes the problem a QP; two
such passes are enough at these horizons. The problem is built once with
``cp.Parameter``s (DPP), so each re-solve only swaps numbers. ``solver="numpy"``
solves the same QP without cvxpy (for machines that lack it): it separates
into two 8-variable box-constrained least squares, one in v and one in w, which
accelerated projected gradient solves to 1e-10 (``tests/test_planning.py``
checks it against cvxpy).

``MPC`` plans from the frames the robot actually sees, warm-starting NWM's CEM
from the previous plan, and returns the first command. With ``replan_every`` k > 1
it plans every k-th step only and in between tracks the rest of the last plan:
its waypoints are kept in the world frame and re-expressed from the robot's
current pose (odometry) at each step.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from nav_come.core.geometry import se2_compose, se2_relative, wrap_angle


class TrackingController:
    """QP tracking of K waypoints spaced ``dt`` apart; returns the first command (v m/s, w rad/s)."""

    def __init__(self, horizon: int = 8, dt: float = 0.25, v_max: float = 1.0, w_max: float = 1.0,
                 heading_weight: float = 0.3, smooth_weight: float = 0.05, passes: int = 2, solver: str = "cvxpy"):
        if solver not in ("cvxpy", "numpy"):
            raise ValueError(f"unknown QP solver {solver!r}; use cvxpy or numpy")
        self.K, self.dt, self.passes, self.solver = horizon, dt, passes, solver
        self.v_max, self.w_max, self.heading_weight, self.smooth_weight = v_max, w_max, heading_weight, smooth_weight
        self.lower = np.tril(np.ones((horizon, horizon)))  # cumulative sums as a matrix: DPP-friendly
        # the numpy solver's fixed rows: distance travelled, and the weighted first differences of the
        # commands, the first one against the last command applied
        self.dist = dt * self.lower
        self.smooth = np.sqrt(smooth_weight) * (np.eye(horizon) - np.eye(horizon, k=-1))
        if solver == "cvxpy":
            self._build_cvxpy()
        self.last = np.zeros(2)

    def _build_cvxpy(self) -> None:
        import cvxpy as cp

        K, dt = self.K, self.dt
        self.v, self.w = cp.Variable(K), cp.Variable(K)
        self.target = cp.Parameter((K, 2))  # waypoints, metres
        self.target_yaw = cp.Parameter(K)
        self.cos, self.sin = cp.Parameter(K), cp.Parameter(K)  # linearisation headings
        self.prev = cp.Parameter(2)  # last command, for smoothness
        x = self.lower @ cp.multiply(self.cos, self.v) * dt
        y = self.lower @ cp.multiply(self.sin, self.v) * dt
        yaw = self.lower @ self.w * dt
        track = cp.sum_squares(x - self.target[:, 0]) + cp.sum_squares(y - self.target[:, 1])
        dv = cp.hstack([self.v[:1] - self.prev[:1], cp.diff(self.v)])
        dw = cp.hstack([self.w[:1] - self.prev[1:], cp.diff(self.w)])
        cost = track + self.heading_weight * cp.sum_squares(yaw - self.target_yaw)
        cost += self.smooth_weight * (cp.sum_squares(dv) + cp.sum_squares(dw))
        limits = [cp.abs(self.v) <= self.v_max, cp.abs(self.w) <= self.w_max]
        self.problem = cp.Problem(cp.Minimize(cost), limits)

    def _solve(self, wp: np.ndarray, yaw: np.ndarray, heading: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """One linearised QP: the commands (v, w), each (K,), or None if the solver gave nothing."""
        if self.solver == "cvxpy":
            self.target.value, self.prev.value, self.target_yaw.value = wp, self.last, yaw
            self.cos.value, self.sin.value = np.cos(heading), np.sin(heading)
            self.problem.solve(warm_start=True)
            return None if self.v.value is None else (self.v.value, self.w.value)
        prev_v, prev_w = np.zeros((2, self.K))  # the smoothness rows' targets: only the first, against
        prev_v[0], prev_w[0] = self.smooth[0, 0] * self.last  # the last command applied
        v = box_least_squares(np.vstack([self.dist * np.cos(heading), self.dist * np.sin(heading), self.smooth]),
                              np.r_[wp[:, 0], wp[:, 1], prev_v], self.v_max)  # fmt: skip
        hw = np.sqrt(self.heading_weight)
        w = box_least_squares(np.vstack([hw * self.dist, self.smooth]), np.r_[hw * yaw, prev_w], self.w_max)
        return v, w

    def reset(self) -> None:
        self.last = np.zeros(2)

    def __call__(self, waypoints: np.ndarray) -> tuple[float, float]:
        """waypoints (K', 3): x, y in metres and yaw in radians, robot frame; K' >= 1 is resampled to K."""
        wp = np.asarray(waypoints, float)
        wp = np.vstack([wp, np.repeat(wp[-1:], max(0, self.K - len(wp)), 0)])[: self.K]
        yaw = np.unwrap(np.r_[0.0, wp[:, 2]])[1:]
        # first linearisation: turn towards each waypoint as fast as the limit allows
        bearing = np.unwrap(np.r_[0.0, np.arctan2(*(np.diff(np.vstack([[0, 0], wp[:, :2]]), axis=0)).T[::-1])])[1:]
        cap = self.w_max * self.dt * np.arange(1, self.K + 1)
        heading = np.clip(bearing, -cap, cap)
        for _ in range(self.passes):
            solved = self._solve(wp[:, :2], yaw, heading)
            if solved is None:  # infeasible cannot happen with box limits; be safe anyway
                return 0.0, 0.0
            v, w = solved
            heading = np.r_[0.0, np.cumsum(w)[:-1] * self.dt] + w * self.dt / 2
        self.commands = np.stack([v, w], 1)  # (K, 2): the whole solution, its first row is applied
        self.last = self.commands[0].copy()
        return float(self.last[0]), float(self.last[1])


def box_least_squares(A: np.ndarray, b: np.ndarray, bound: float, tol: float = 1e-10,
                      max_iter: int = 20000) -> np.ndarray:
    """argmin ||A z - b||^2 subject to |z_i| <= bound, by accelerated projected gradient (FISTA with
    restarts). A has full column rank here (the smoothness rows), so the minimiser is unique."""
    H, g = A.T @ A, A.T @ b
    step = 1.0 / np.linalg.eigvalsh(H)[-1]
    z = y = np.clip(np.linalg.lstsq(A, b, rcond=None)[0], -bound, bound)
    t = 1.0
    for _ in range(max_iter):
        z_new = np.clip(y - step * (H @ y - g), -bound, bound)
        if np.abs(z_new - z).max() < tol:
            return z_new
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        y = z_new + (t - 1) / t_new * (z_new - z)
        if (y - z_new) @ (z_new - z) > 0:  # momentum points uphill: restart it
            y, t_new = z_new, 1.0
        z, t = z_new, t_new
    return z


class MPC:
    """Plan from the last frames, track the plan, repeat; planner state is warm-started.

    replan_every: plan at every k-th step and track the last plan's remaining waypoints in
    between (needs the robot's pose at each step; without one it plans every step)."""

    def __init__(self, planner, controller: TrackingController, spacing: float, context: int = 4,
                 replan_every: int = 1):
        if replan_every < 1:
            raise ValueError(f"replan_every must be >= 1, got {replan_every}")
        self.planner, self.controller, self.spacing = planner, controller, spacing
        self.replan_every = replan_every
        self.frames: deque = deque(maxlen=context)
        self.previous = None
        self.route = None  # (K, 3) the last plan's waypoints in the world frame (x, y metres, yaw)
        self.since = 0  # steps since the last plan

    def reset(self, first_frame: np.ndarray, pose=None, history: tuple | None = None) -> None:
        """Start an episode: the context is the first frame repeated.

        A memory-carrying planner (``uses_memory``) is given the frames and world
        poses seen before the episode (``history = (frames (T, H, W, 3), poses (T, 3))``)
        and the first frame with its ``pose``.
        """
        self.frames.clear()
        for _ in range(self.frames.maxlen):
            self.frames.append(first_frame)
        self.previous, self.route, self.since = None, None, 0
        self.controller.reset()
        if self.planner.uses_memory and pose is not None:
            frames, poses = history if history is not None else (np.zeros((0, *first_frame.shape), np.uint8),
                                                                 np.zeros((0, 3)))
            self.planner.observe(np.concatenate([frames, first_frame[None]]), np.vstack([poses, pose]))

    def act(self, frame: np.ndarray, goal: np.ndarray, generator: torch.Generator | None = None, pose=None,
            first: bool = False):
        """frame, goal: uint8 (H, W, 3); pose: the frame's world pose, fed to a memory-carrying
        planner (skipped for the first frame, which ``reset`` observed) and used to track a plan
        between replans. Returns ((v, w), plan): plan is the new PlanResult, or None on a step that
        tracked the last one."""
        self.frames.append(frame)
        if self.planner.uses_memory and pose is not None and not first:
            self.planner.observe(frame[None], np.asarray(pose)[None], append=True)
        self.since += 1
        if self.route is not None and pose is not None and self.since < min(self.replan_every, len(self.route)):
            return self.controller(self._remaining(np.asarray(pose, float))), None
        ctx = torch.from_numpy(np.stack(self.frames)).float().div(255).movedim(-1, -3)[None]  # (1, C, 3, H, W)
        g = torch.from_numpy(goal).float().div(255).movedim(-1, -3)  # (3, H, W)
        plan = self.planner(ctx, g, generator, warm_start=self.previous)
        self.previous = plan if plan.mean is not None else None
        wp = plan.waypoints.numpy().astype(float)
        wp_m = np.concatenate([wp[:, :2] * self.spacing, wrap_angle(wp[:, 2:])], 1)
        self.since, self.route = 0, None
        if pose is not None:
            self.route = se2_compose(np.asarray(pose, float), wp_m)
        return self.controller(wp_m), plan

    def _remaining(self, pose: np.ndarray) -> np.ndarray:
        """The last plan's waypoints not yet due, in the robot's current frame (metres, radians)."""
        return se2_relative(pose, self.route[self.since:])
