"""Optional habitat-sim backend behind the same interface as the embedded MuJoCo one.

UNTESTED HERE: habitat-sim has no pip distribution and cannot be installed on
the machines this project is developed and tested on. It is written against
habitat-sim's documented Python API (SimulatorConfiguration, CameraSensorSpec,
AgentConfiguration, PathFinder) and is imported only when ``backend="habitat"``
is asked for. ``world`` is the path of a scene file (e.g. a .glb with its navmesh).

Frames: habitat is y-up with agents facing -z. Our world frame (x forward at
yaw 0, y left, z up; nav_come.core.geometry) maps to habitat as
``(x_h, y_h, z_h) = (x, z, -y)``, and our yaw θ is a rotation of θ - π/2 about y_h.
"""

from __future__ import annotations

import math

import numpy as np

from envs.sim import RobotConfig, unicycle_step

try:
    import habitat_sim
except ImportError as err:  # one clear line, naming the default
    raise ImportError(
        "habitat-sim is not installed (it has no pip package; see https://github.com/facebookresearch/habitat-sim); "
        "use the embedded default backend='mujoco'"
    ) from err

CAMERA_HEIGHT = 0.5


def _to_habitat(xy, height: float = 0.0) -> np.ndarray:
    return np.array([xy[0], height, -xy[1]], dtype=np.float32)


def _from_habitat(p) -> np.ndarray:
    return np.array([p[0], -p[2]])


def _rotation(yaw: float):
    half = (yaw - math.pi / 2) / 2  # about +y_h
    return np.quaternion(math.cos(half), 0.0, math.sin(half), 0.0)  # numpy-quaternion ships with habitat-sim


class HabitatNavMesh:
    """The navigation queries of envs.occupancy.OccupancyMap, answered by habitat's PathFinder."""

    def __init__(self, pathfinder):
        self.pf = pathfinder

    def sample_free(self, rng: np.random.Generator, min_clearance: float | None = None) -> np.ndarray:
        self.pf.seed(int(rng.integers(2**31)))
        return _from_habitat(self.pf.get_random_navigable_point())

    def path(self, start_xy, goal_xy) -> np.ndarray | None:
        sp = habitat_sim.ShortestPath()
        sp.requested_start, sp.requested_end = _to_habitat(start_xy), _to_habitat(goal_xy)
        if not self.pf.find_path(sp):
            return None
        return np.array([_from_habitat(p) for p in sp.points])

    def goal_distance(self, goal_xy):
        def dist(xy) -> float:
            sp = habitat_sim.ShortestPath()
            sp.requested_start, sp.requested_end = _to_habitat(xy), _to_habitat(goal_xy)
            return float(sp.geodesic_distance) if self.pf.find_path(sp) else math.inf

        return dist

    def draw(self, size: int = 256, path=None, robot=None, goal=None) -> np.ndarray:
        import cv2

        lo, hi = self.pf.get_bounds()
        res = max(hi[0] - lo[0], hi[2] - lo[2]) / size
        view = self.pf.get_topdown_view(res, float(lo[1]))
        img = np.where(view[..., None], 235, 90).astype(np.uint8).repeat(3, -1)
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST)

        def px(p):
            return int((p[0] - lo[0]) / res), int((-p[1] - lo[2]) / res)

        if path is not None and len(path) > 1:
            cv2.polylines(img, [np.array([px(p) for p in path], np.int32)], False, (40, 90, 220), 1)
        if goal is not None:
            cv2.drawMarker(img, px(goal), (0, 170, 0), cv2.MARKER_STAR, 10, 2)
        if robot is not None:
            cv2.circle(img, px(robot[:2]), 4, (220, 30, 30), -1)
        return img


class HabitatSimulator:
    """Unicycle robot with a forward RGB camera in a habitat scene; same methods as envs.sim.Simulator."""

    def __init__(self, world: str, image_size: int = 64, robot: RobotConfig | None = None, seed: int = 0):
        self.robot, self.image_size = robot or RobotConfig(), int(image_size)
        sim_cfg = habitat_sim.SimulatorConfiguration()
        sim_cfg.scene_id = str(world)
        sim_cfg.random_seed = int(seed)
        cam = habitat_sim.CameraSensorSpec()
        cam.uuid, cam.sensor_type = "rgb", habitat_sim.SensorType.COLOR
        cam.resolution = [self.image_size, self.image_size]
        cam.position = [0.0, CAMERA_HEIGHT, 0.0]
        cam.hfov = 90.0
        agent_cfg = habitat_sim.agent.AgentConfiguration(sensor_specifications=[cam])
        self.sim = habitat_sim.Simulator(habitat_sim.Configuration(sim_cfg, [agent_cfg]))
        self.agent = self.sim.initialize_agent(0)
        self.navmesh = HabitatNavMesh(self.sim.pathfinder)
        self._pose = np.zeros(3)

    @property
    def pose(self) -> np.ndarray:
        return self._pose.copy()

    def set_pose(self, pose) -> bool:
        pose = np.asarray(pose, float)
        state = habitat_sim.AgentState()
        state.position, state.rotation = _to_habitat(pose[:2]), _rotation(pose[2])
        self.agent.set_state(state)
        self._pose = pose.copy()
        return bool(self.sim.pathfinder.is_navigable(_to_habitat(pose[:2])))

    def step(self, v: float, w: float) -> bool:
        """Drive one step; the navmesh stops (slides) the motion at obstacles, which counts as a collision."""
        v = float(np.clip(v, -self.robot.v_max, self.robot.v_max))
        w = float(np.clip(w, -self.robot.w_max, self.robot.w_max))
        target = unicycle_step(self._pose, v, w, self.robot.dt)
        start = _to_habitat(self._pose[:2])
        reached = self.sim.pathfinder.try_step(start, _to_habitat(target[:2]))
        collided = float(np.linalg.norm(np.asarray(reached) - _to_habitat(target[:2]))) > 1e-3
        self.set_pose(np.r_[_from_habitat(reached), target[2]])
        return collided

    def render(self, pose=None) -> np.ndarray:
        keep = self.pose
        if pose is not None:
            self.set_pose(pose)
        frame = np.asarray(self.sim.get_sensor_observations()["rgb"])[..., :3].copy()
        if pose is not None:
            self.set_pose(keep)
        return frame

    def close(self) -> None:
        self.sim.close()
