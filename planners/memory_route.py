"""Goal progress read from the episode's memory: how far along the driven route the goal lies.

A cost that compares imagined frames with the goal has nothing to go on while the goal is out of
view. When the goal was seen earlier in the episode, the spatial memory knows where: the stored
frame whose latent is closest to the goal's. The frames the robot drove through form a route
graph: consecutive frames are linked by the distance driven between them, and frames within
``link`` metres of each other are linked too, so a drive back along the same corridor joins the
drive out. Dijkstra gives every stored frame's route distance to the goal's frame, and a
candidate plan's value is the route distance from where it ends: the straight distance to a stored
frame within ``link`` of the end plus that frame's route distance, the smallest such sum (or, with
none that close, by the nearest stored frame), never a straight line through walls to the goal. The planning cost adds
``weight`` per metre of it (``--route-weight``, :func:`planners.cost.world_model_cost`).

It needs the episode's frames with their world poses (odometry), as the spatial memory expert
does. Without a history, or when no stored latent is within ``max_match`` (latent MSE) of the
goal's, the term is off for that plan.

:class:`RoutePolicyPlanner` gives a sampling policy the same map, without a world model: NoMaD
proposes trajectories for the goal and the route value of their ends picks one (NoMaD's first
sample when the goal is not in memory). It is the ablation that tells the map's share of a
world-model planner's gain with the route from the imagination's.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.csgraph import dijkstra

from nav_come.core.geometry import se2_compose
from planners.planner import PlanResult, PolicyPlanner

# Latent MSE below which a stored frame counts as the goal seen, chosen on validation worlds: on 20
# revisit episodes the goal's nearest stored latent (the drive that passed it) lay at 0.03-0.72
# (median 0.18), the nearest latent of another world's drive at 0.31-1.81.
MAX_MATCH = 0.3


def route_distances(poses: np.ndarray, goal: int, link: float) -> np.ndarray:
    """(T,) metres along the route graph from each stored pose (T, 3) to ``poses[goal]``: consecutive
    frames linked by the distance between them, any two frames within ``link`` metres linked too."""
    xy = np.asarray(poses, np.float64)[:, :2]
    gap = np.linalg.norm(xy[:, None] - xy[None], axis=-1)  # (T, T)
    edges = np.where(gap <= link, gap, 0.0)  # 0: no edge (dijkstra's dense convention)
    step = np.arange(len(xy) - 1)
    edges[step, step + 1] = edges[step + 1, step] = np.maximum(gap[step, step + 1], 1e-9)
    return dijkstra(edges, directed=False, indices=goal)


class MemoryRoute:
    """weight: cost per metre of route distance; link: metres within which stored frames are linked;
    max_match: the largest latent MSE between the goal and a stored frame that counts as seen."""

    def __init__(self, weight: float, link: float = 0.5, max_match: float = MAX_MATCH):
        if not (weight >= 0 and link > 0 and max_match > 0):
            raise ValueError(f"need route weight >= 0, link > 0 and max_match > 0, got {weight}, {link}, {max_match}")
        self.weight, self.link, self.max_match = float(weight), float(link), float(max_match)

    @property
    def name(self) -> str:
        return f"{self.weight:g} x route distance to where the goal was seen (m)"

    @staticmethod
    def end_positions(pose: np.ndarray, ends: torch.Tensor, spacing: float) -> np.ndarray:
        """World positions (N, 2) of plan ends (N, 3) given in the robot frame of ``pose`` (world x, y,
        yaw), xy in spacing units of ``spacing`` metres: what :meth:`plan_value`'s function takes."""
        ends = ends.double().cpu().numpy() * [spacing, spacing, 1.0]  # (N, 3) metres, radians
        return se2_compose(np.broadcast_to(np.asarray(pose, np.float64), ends.shape), ends)[:, :2]

    def locate(self, latents: torch.Tensor, goal: torch.Tensor) -> int | None:
        """Index of the stored latent (T, c, h, w) closest to the goal latent (c, h, w); None when none
        is within max_match."""
        mse = (latents.float() - goal.to(latents.device).float()).pow(2).flatten(1).mean(1)
        best = int(mse.argmin())
        return best if float(mse[best]) <= self.max_match else None

    def plan_value(self, latents: torch.Tensor, poses: np.ndarray, goal: torch.Tensor):
        """The value function of one plan, world end positions (N, 2) -> (N,) metres, or None when the
        goal is not in memory."""
        found = self.locate(latents, goal)
        if found is None:
            return None
        xy = np.asarray(poses, np.float64)[:, :2]
        route = route_distances(poses, found, self.link)  # (T,) inf where the graph does not reach

        def value(ends: np.ndarray) -> np.ndarray:
            straight = np.linalg.norm(np.asarray(ends, np.float64)[:, None] - xy[None], axis=-1)  # (N, T)
            via = straight + route[None]
            near = np.where(straight <= self.link, via, np.inf).min(1)  # onto the route where it passes close
            nearest = via[np.arange(len(via)), straight.argmin(1)]  # else by the nearest stored frame
            return np.where(np.isfinite(near), near, nearest)

        return value


class RoutePolicyPlanner(PolicyPlanner):
    """A sampling policy (NoMaD) ranked by the memory route: ``n`` samples for the goal, the one
    whose end has the smallest route value (:meth:`MemoryRoute.plan_value`) is the plan.

    ae: the autoencoder whose latents locate the goal in memory (the world model's, so that the
    match is the one NWM's route term makes); spacing: metres per spacing unit of the waypoints.
    Implements :class:`planners.planner.Planner`; it observes the episode's frames and poses."""

    uses_memory = True

    def __init__(self, policy, ae, route: MemoryRoute, spacing: float, n: int = 16, name: str = "NoMaD"):
        if n < 1 or not spacing > 0:
            raise ValueError(f"need n >= 1 samples and spacing > 0, got {n} and {spacing}")
        super().__init__(policy)
        self.ae, self.route, self.spacing, self.n, self.name = ae, route, spacing, n, name
        self.latents: torch.Tensor | None = None
        self.poses: np.ndarray | None = None

    @property
    def cost_name(self) -> str:
        return f"{self.route.name}, over {self.n} {self.name} samples"

    def reset(self) -> None:
        self.latents, self.poses = None, None

    def _encode(self, frames) -> torch.Tensor:
        """(T, H, W, 3) uint8 or (T, 3, H, W) in [0, 1] frames -> (T, c, h, w) latents."""
        from nav_come.world_model import encode_frames

        x = frames if isinstance(frames, torch.Tensor) else torch.as_tensor(np.stack([np.asarray(f) for f in frames]))
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.movedim(-1, 1)
        return encode_frames(self.ae, x, bf16=False).cpu()

    def observe(self, frames, poses=None, append: bool = False) -> None:
        """The episode so far: frames with world poses (T, 3); frames without poses are not kept."""
        if not append or self.latents is None:
            self.reset()
        if len(frames) == 0 or poses is None:
            return
        poses = np.asarray(poses, np.float64).reshape(-1, 3)
        if len(poses) != len(frames):
            raise ValueError(f"observe got {len(frames)} frames but {len(poses)} poses")
        z = self._encode(frames)
        if self.latents is None:
            self.latents, self.poses = z, poses
        else:
            self.latents, self.poses = torch.cat([self.latents, z]), np.vstack([self.poses, poses])

    @torch.no_grad()
    def __call__(self, context: torch.Tensor, goal: torch.Tensor, generator: torch.Generator | None = None,
                 warm_start=None, imagine: bool = False):  # fmt: skip
        """context (1, C, 3, H, W), goal (3, H, W) in [0, 1] -> the chosen sample's PlanResult."""
        n = self.n
        wp = self.policy.predict(context.expand(n, *context.shape[1:]), goal[None].expand(n, *goal.shape),
                                 generator=generator)["waypoints"].float().cpu()  # (n, K, 3)  # fmt: skip
        value = None
        if self.latents is not None:
            value = self.route.plan_value(self.latents, self.poses, self._encode(goal[None])[0])
        if value is None:
            return PlanResult(wp[0], note="goal not in memory: the policy's first sample")
        costs = self.route.weight * value(self.route.end_positions(self.poses[-1], wp[:, -1], self.spacing))
        best = int(np.argmin(costs))
        return PlanResult(wp[best], float(costs[best]), self.cost_name)
