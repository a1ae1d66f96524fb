"""``nav_come/ImageNav-v0``: reach the place a goal image was taken from.

Observation: ``{"rgb": uint8 (H, W, 3), "goal": uint8 (H, W, 3)}``, the forward
camera now and at the goal pose.

Action: ``(v, w)``, forward speed in m/s and yaw rate in rad/s, held for one
0.25 s step (4 Hz, RECON's frame rate), each clipped to ``[-v_max, v_max]`` and
``[-w_max, w_max]`` (defaults 1 m/s and 1 rad/s). The robot moves along the
arc of a unicycle. Converting to the world model's action: the step's
displacement in the robot frame at the start of the step, divided by
``metric_waypoint_spacing`` = ``v_max · dt`` = 0.25 m, and its yaw change;
for straight motion that is ``(v · 0.25 / 0.25, 0, 0) = (v, 0, 0)``.

Reward per step: the decrease of the shortest-path distance to the goal
(metres), minus 0.01, minus 0.1 on a collision, plus 1.0 on success.
``step`` after the episode ended (or before the first ``reset``) raises: call ``reset``.
The episode terminates when the robot is within ``success_radius`` (0.5 m)
of the goal position; it is truncated after ``max_steps``.

``info``: ``is_success``, ``pose`` (x, y, yaw), ``collision``,
``distance_to_goal`` (shortest-path metres), ``euclidean_distance``,
``world_seed``.

``render_mode="rgb_array"`` returns a top-down map with the robot, the goal
and the path driven so far.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.occupancy import OccupancyMap
from envs.sim import RobotConfig, Simulator
from envs.worlds import generate_world


def make_backend(backend: str, world: str, seed: int, image_size: int, robot: RobotConfig):
    """A simulator and its navigation map: ``(sim, nav)``.

    ``sim`` offers pose/set_pose/step/render/close (envs.sim.Simulator);
    ``nav`` offers sample_free/path/goal_distance/draw (envs.occupancy.OccupancyMap).
    """
    if backend == "mujoco":
        w = generate_world(world, seed)
        return Simulator(w, image_size, robot), OccupancyMap(w)
    if backend == "habitat":
        from envs.habitat_backend import HabitatSimulator  # imported only when asked for

        sim = HabitatSimulator(world, image_size, robot, seed=seed)
        return sim, sim.navmesh
    raise ValueError(f"unknown simulator backend {backend!r}; use 'mujoco' (the embedded default) or 'habitat'")


class ImageNavEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, world: str = "maze", world_seeds=range(1_000_000, 1_000_100), image_size: int = 64,
                 max_steps: int = 200, goal_distance: tuple[float, float] = (2.0, 8.0),
                 success_radius: float = 0.5, render_mode: str | None = None, backend: str = "mujoco",
                 robot: RobotConfig | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if not goal_distance[0] < goal_distance[1]:
            raise ValueError(f"goal_distance must be (min, max) with min < max, got {goal_distance}")
        self.world, self.world_seeds = world, [int(s) for s in np.atleast_1d(list(world_seeds))]
        self.image_size, self.max_steps = image_size, max_steps
        self.goal_distance, self.success_radius = goal_distance, success_radius
        self.render_mode, self.backend = render_mode, backend
        self.robot = robot or RobotConfig()
        img = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = spaces.Dict({"rgb": img, "goal": img})
        lim = np.array([self.robot.v_max, self.robot.w_max], np.float32)
        self.action_space = spaces.Box(-lim, lim, dtype=np.float32)
        self._world_seed, self.sim, self.nav = None, None, None

    # ------------------------------------------------------------------ episode set-up
    def _load_world(self, seed: int) -> None:
        if seed != self._world_seed:
            if self.sim is not None:
                self.sim.close()
            self.sim, self.nav = make_backend(self.backend, self.world, seed, self.image_size, self.robot)
            self._world_seed = seed

    def _sample_episode(self) -> tuple[np.ndarray, np.ndarray]:
        """Start and goal poses with the goal's shortest-path distance in ``goal_distance``."""
        rng = self.np_random
        for _ in range(100):
            start = self.nav.sample_free(rng)
            path = self.nav.path(start, self.nav.sample_free(rng))
            if path is None or len(path) < 2:
                continue
            length = np.cumsum(np.r_[0, np.linalg.norm(np.diff(path, axis=0), axis=1)])
            if length[-1] < self.goal_distance[0]:
                continue
            k = int(np.searchsorted(length, min(length[-1], rng.uniform(*self.goal_distance))))
            k = min(max(k, 1), len(path) - 1)
            heading = math.atan2(*(path[k] - path[max(0, k - 3)])[::-1])  # looking the way it arrives
            return (np.r_[start, rng.uniform(-math.pi, math.pi)],
                    np.r_[path[k], heading + rng.normal(0, 0.3)])
        raise RuntimeError(f"could not place an episode in {self.world} world {self._world_seed}")

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        default_world = self.world_seeds[self.np_random.integers(len(self.world_seeds))]
        self._load_world(int(options.get("world_seed", default_world)))
        if "start" in options and "goal" in options:
            start, goal = np.asarray(options["start"], float), np.asarray(options["goal"], float)
        else:
            start, goal = self._sample_episode()
        if not self.sim.set_pose(start):
            raise ValueError(f"start pose {start.tolist()} is in collision in {self.world} world {self._world_seed}")
        self.goal_pose = goal
        self.goal_image = self.sim.render(goal)
        self._goal_distance = self.nav.goal_distance(goal[:2])
        self.trace, self.steps, self._ended = [self.sim.pose[:2].copy()], 0, False
        self._dist = self._distance()
        return self._obs(), self._info(False)

    # ------------------------------------------------------------------ stepping
    def _distance(self) -> float:
        d = self._goal_distance(self.sim.pose[:2])
        return d if math.isfinite(d) else float(np.linalg.norm(self.sim.pose[:2] - self.goal_pose[:2]))

    def _obs(self) -> dict:
        return {"rgb": self.sim.render(), "goal": self.goal_image.copy()}

    def _info(self, collision: bool) -> dict:
        euclid = float(np.linalg.norm(self.sim.pose[:2] - self.goal_pose[:2]))
        return {"is_success": euclid < self.success_radius, "pose": self.sim.pose, "collision": collision,
                "distance_to_goal": self._dist, "euclidean_distance": euclid, "world_seed": self._world_seed}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be 2 finite numbers (v m/s, w rad/s), got {action!r}")
        if getattr(self, "_ended", True):  # never reset, or the episode ended: gymnasium leaves this undefined
            raise RuntimeError("the episode has ended (terminated or truncated) or never started; call reset() first")
        collision = self.sim.step(*action)
        self.steps += 1
        self.trace.append(self.sim.pose[:2].copy())
        dist, self._dist = self._dist, self._distance()
        info = self._info(collision)
        reward = (dist - self._dist) - 0.01 - 0.1 * collision + 1.0 * info["is_success"]
        truncated = self.steps >= self.max_steps and not info["is_success"]
        self._ended = bool(info["is_success"] or truncated)  # no success bonus paid twice
        return self._obs(), float(reward), bool(info["is_success"]), bool(truncated), info

    def render(self):
        if self.render_mode == "rgb_array":
            return self.nav.draw(256, path=np.array(self.trace), robot=self.sim.pose, goal=self.goal_pose[:2])
        return None

    def close(self) -> None:
        if self.sim is not None:
            self.sim.close()
