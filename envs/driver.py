"""Scripted driving for data collection: RECON-like motion with many revisits.

A route is a list of goals visited in order: a patrol cycling through a few
landmarks, an out-and-back shuttle, or open exploration. The robot follows
shortest paths to each goal with pure pursuit, at a speed that drifts between
segments, with a little steering noise, and turns in place when the path
bends sharply. Cycling the same route is what makes later frames revisit
earlier places (same position, same heading), which memory experts learn from.

With ``wall_push`` > 0 the driver also drives into walls on purpose now and then:
it holds a straight or gently curving command until it touches something, keeps
pushing for a few steps (the view stays frozen), then backs off and resumes its
route. Every frame records the command given there (as the one-step motion it
would have made with nothing in the way) and whether the step into it touched
something, so a world model can learn that pushing into a wall changes nothing.
"""

from __future__ import annotations

import math

import numpy as np

from envs.occupancy import OccupancyMap
from envs.sim import Simulator
from nav_come.core.geometry import wrap_angle

MODES = ("patrol", "shuttle", "explore")
MODE_PROBS = (0.6, 0.28, 0.12)
LOOKAHEAD = 0.8  # m, pure-pursuit lookahead
TURN_IN_PLACE = 1.1  # rad, heading error above which the robot turns on the spot
GOAL_RADIUS = 0.5  # m
PUSH_STEPS = (2, 8)  # steps of pushing on after the first contact, inclusive
PUSH_MAX_FREE = 40  # a push that meets nothing within this many steps is given up
BACK_OFF_STEPS = (2, 4)  # reverse steps after a push, inclusive


def _route_points(occ: OccupancyMap, rng: np.random.Generator, k: int, min_sep: float = 3.0,
                  max_sep: float = 8.0) -> list[np.ndarray]:
    """k free points, at least ``min_sep`` metres apart and at most ``max_sep`` metres of path apart.

    Short routes are what make a 300-frame trajectory pass the same places several times.
    """
    candidates = [np.asarray(p, float) for p in occ.world.landmarks if occ.is_free(p)]
    rng.shuffle(candidates)
    points: list[np.ndarray] = []
    for _ in range(200):
        if len(points) == k:
            break
        p = candidates.pop() if candidates and rng.random() < 0.6 else occ.sample_free(rng, occ.clearance + 0.2)
        if all(np.linalg.norm(p - q) >= min_sep and occ.geodesic(p, q) <= max_sep for q in points):
            points.append(p)
    return points


class Driver:
    """Drives a simulator along a random route; ``run(T)`` records T frames and poses."""

    def __init__(self, sim: Simulator, occ: OccupancyMap, rng: np.random.Generator, mode: str | None = None,
                 wall_push: float = 0.0):
        if not 0.0 <= wall_push <= 1.0:
            raise ValueError(f"wall_push is a probability per frame, in [0, 1]; got {wall_push}")
        self.sim, self.occ, self.rng, self.wall_push = sim, occ, rng, float(wall_push)
        self.mode = mode or str(rng.choice(MODES, p=MODE_PROBS))
        if self.mode not in MODES:
            raise ValueError(f"unknown driving mode {self.mode!r}; choose one of {MODES}")
        k = {"patrol": int(rng.integers(3, 5)), "shuttle": 2, "explore": 1}[self.mode]
        self.route = _route_points(occ, rng, k)
        self.goal_idx = 0
        self.path: np.ndarray | None = None
        self.cruise = rng.uniform(0.7, 1.0)
        self.steer_noise = 0.0
        self.commanded: np.ndarray | None = None  # (T, 3) after run(): commanded one-step motion per frame
        self.contact: np.ndarray | None = None  # (T,) bool after run(): the step into the frame touched something

    def _next_goal(self) -> np.ndarray:
        if self.mode == "explore":
            self.route = [self.occ.sample_free(self.rng, self.occ.clearance + 0.2)]
            return self.route[0]
        self.goal_idx = (self.goal_idx + 1) % len(self.route)
        return self.route[self.goal_idx]

    def _replan(self, goal: np.ndarray) -> None:
        self.path = self.occ.path(self.sim.pose[:2], goal)
        self.cruise = float(np.clip(self.cruise + self.rng.normal(0, 0.15), 0.6, 1.0))

    def _command(self) -> tuple[float, float]:
        """Pure pursuit towards the lookahead point of the current path: (v, w)."""
        x, y, yaw = self.sim.pose
        d = np.linalg.norm(self.path - (x, y), axis=1)
        i = int(np.argmin(d))
        self.path = self.path[i:]
        ahead = np.nonzero(d[i:] >= LOOKAHEAD)[0]
        target = self.path[ahead[0]] if len(ahead) else self.path[-1]
        err = wrap_angle(math.atan2(target[1] - y, target[0] - x) - yaw)
        limits = self.sim.robot
        if abs(err) > TURN_IN_PLACE:
            return 0.0, math.copysign(limits.w_max, err)
        self.steer_noise = 0.8 * self.steer_noise + self.rng.normal(0, 0.1)  # smooth wander
        v = self.cruise * limits.v_max * max(0.5, math.cos(err))
        return v, float(np.clip(2.0 * err + self.steer_noise, -limits.w_max, limits.w_max))

    def start(self) -> None:
        """Put the robot at the first route point with a random heading."""
        p = self.route[0]
        self.sim.set_pose([p[0], p[1], self.rng.uniform(-math.pi, math.pi)])
        self._replan(self._next_goal())

    def _push(self):
        """Commands of one push into whatever lies ahead: (v, w) pairs, generated lazily.

        Drives on with a fixed gentle curvature until contact (``self.touched``), pushes on for a
        few more steps, then reverses while turning. Gives up if nothing is met.
        """
        limits = self.sim.robot
        v, w = self.cruise * limits.v_max, float(self.rng.uniform(-0.3, 0.3)) * limits.w_max
        pushes = int(self.rng.integers(PUSH_STEPS[0], PUSH_STEPS[1] + 1))
        back = int(self.rng.integers(BACK_OFF_STEPS[0], BACK_OFF_STEPS[1] + 1))
        turn = float(self.rng.choice([-1.0, 1.0])) * limits.w_max
        for _ in range(PUSH_MAX_FREE):
            yield v, w
            if self.touched:
                break
        else:
            return
        for _ in range(pushes):
            yield v, w
        for _ in range(back):
            yield -0.3 * limits.v_max, turn

    def run(self, T: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Record T frames. Returns frames (T, H, W, 3) uint8, poses (T, 3), and the number of collisions.

        Also sets ``self.commanded`` (T, 3): the command given at each frame, as the motion
        (dx, dy metres in the robot frame, dyaw radians) it makes over one step with nothing in
        the way (the last row, after the final frame, is zero), and ``self.contact`` (T,) bool:
        the step into that frame stopped at an obstacle.
        """
        self.start()
        frames, poses, collisions, stuck = [], [], 0, 0
        commanded, contact = np.zeros((T, 3)), np.zeros(T, bool)
        goal = self.route[self.goal_idx]
        push, self.touched = None, False
        for k in range(T):
            frames.append(self.sim.render())
            poses.append(self.sim.pose)
            if k == T - 1:
                break
            if push is None and self.wall_push and self.rng.random() < self.wall_push:
                push = self._push()
            command = next(push, None) if push is not None else None
            if command is None:
                if push is not None:  # a push just ended: find the way back to the route
                    push = None
                    self._replan(goal)
                if self.path is None or np.linalg.norm(self.sim.pose[:2] - goal) < GOAL_RADIUS:
                    goal = self._next_goal()
                    self._replan(goal)
                    if self.path is None:
                        continue
                command = self._command() if stuck < 2 else (-0.3, self.rng.choice([-1.0, 1.0]))
            v, w = command
            commanded[k] = self.sim.robot.free_motion(v, w)
            hit = self.sim.step(v, w)
            contact[k + 1], self.touched = hit, hit
            collisions += hit
            if push is None:
                stuck = stuck + 1 if hit else 0
                if hit:
                    self._replan(goal)
        self.commanded, self.contact = commanded, contact
        return np.stack(frames), np.stack(poses), collisions
