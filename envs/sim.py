"""The embedded simulator: a unicycle robot with a forward camera in a MuJoCo world.

The robot is kinematic (Jackal-like): it follows commanded forward speed ``v``
(m/s) and yaw rate ``w`` (rad/s) within limits, integrated exactly along arcs.
It collides with obstacles through MuJoCo's collision detection: a motion that
would make contact stops at the last free pose and reports the collision.
Poses follow nav_come.core.geometry: x forward, y left, yaw counter-clockwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from envs.rendering import select_backend
from envs.worlds import World, generate_world


@dataclass
class RobotConfig:
    """Unicycle limits and timing.

    v_max: forward speed limit, m/s (reverse is limited to ``v_max`` too).
    w_max: yaw-rate limit, rad/s.
    dt: seconds per step; 0.25 s gives RECON's 4 Hz frame rate.
    substeps: collision checks per step.
    """

    v_max: float = 1.0
    w_max: float = 1.0
    dt: float = 0.25
    substeps: int = 5

    def __post_init__(self) -> None:
        for name in ("v_max", "w_max", "dt"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RobotConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.substeps < 1:
            raise ValueError(f"RobotConfig.substeps must be >= 1, got {self.substeps}")

    @property
    def spacing(self) -> float:
        """metric_waypoint_spacing: metres covered by one step at full speed."""
        return self.v_max * self.dt

    def clip(self, v: float, w: float) -> tuple[float, float]:
        """Commands (v, w) clipped to the limits."""
        return float(np.clip(v, -self.v_max, self.v_max)), float(np.clip(w, -self.w_max, self.w_max))

    def free_motion(self, v: float, w: float) -> np.ndarray:
        """The motion (dx, dy metres in the robot frame, dyaw radians) of one ``dt`` step of (v, w),
        clipped, with nothing in the way."""
        return unicycle_step(np.zeros(3), *self.clip(v, w), self.dt)


def unicycle_step(pose: np.ndarray, v: float, w: float, h: float) -> np.ndarray:
    """Exact unicycle motion over ``h`` seconds from pose (x, y, yaw)."""
    x, y, yaw = pose
    if abs(w) < 1e-9:
        return np.array([x + v * h * math.cos(yaw), y + v * h * math.sin(yaw), yaw])
    yaw2 = yaw + w * h
    r = v / w
    return np.array([x + r * (math.sin(yaw2) - math.sin(yaw)), y - r * (math.cos(yaw2) - math.cos(yaw)),
                     math.atan2(math.sin(yaw2), math.cos(yaw2))])


class Simulator:
    """A world, a robot and its camera. ``image_size`` is the square camera resolution."""

    def __init__(self, world: World | tuple[str, int], image_size: int = 64, robot: RobotConfig | None = None):
        select_backend()
        import mujoco  # after the backend is chosen

        self._mj = mujoco
        self.world = world if isinstance(world, World) else generate_world(*world)
        self.robot = robot or RobotConfig()
        self.image_size = int(image_size)
        self.model = mujoco.MjModel.from_xml_string(self.world.xml, self.world.assets)
        self.data = mujoco.MjData(self.model)
        self._renderer = None

    @property
    def pose(self) -> np.ndarray:
        """Current pose (x, y, yaw), shape (3,)."""
        return self.data.qpos[:3].copy()

    def _put(self, pose: np.ndarray) -> bool:
        """Place the robot; True when it touches nothing."""
        self.data.qpos[:3] = pose
        self._mj.mj_kinematics(self.model, self.data)
        self._mj.mj_collision(self.model, self.data)
        return self.data.ncon == 0  # only the robot has contype bits, so every contact is the robot's

    def set_pose(self, pose) -> bool:
        """Teleport to ``pose``; returns False (and stays there) when that pose is in collision."""
        return self._put(np.asarray(pose, dtype=float))

    def step(self, v: float, w: float) -> bool:
        """Drive one ``dt`` step with commands clipped to the limits. Returns True on collision."""
        v, w = self.robot.clip(v, w)
        h = self.robot.dt / self.robot.substeps
        pose = self.pose
        for _ in range(self.robot.substeps):
            nxt = unicycle_step(pose, v, w, h)
            if not self._put(nxt):
                self._put(pose)  # stop short at the last free pose
                return True
            pose = nxt
        return False

    def render(self, pose=None) -> np.ndarray:
        """RGB frame from the forward camera, uint8 (H, W, 3); at ``pose`` if given (the robot stays put)."""
        if self._renderer is None:
            self._renderer = self._mj.Renderer(self.model, self.image_size, self.image_size)
        if pose is not None:
            keep = self.pose
            self.data.qpos[:3] = pose
            self._mj.mj_kinematics(self.model, self.data)
        self._mj.mj_camlight(self.model, self.data)  # camera poses are not part of mj_kinematics
        self._renderer.update_scene(self.data, camera="front")
        frame = self._renderer.render().copy()
        if pose is not None:
            self._put(keep)
        return frame

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
