"""Planning costs: how far an imagined rollout ends from the goal image.

``GoalDistance`` is the perceptual distance between the last imagined frame and
the goal. It is LPIPS only when the user supplies LPIPS weights; otherwise it is
an offline distance that says its own name (``1-SSIM``, 1-SSIM at half resolution,
pixel MSE, MSE between autoencoder latents, the temporal distance a trained GNM
predicts from the last imagined frames to the goal, as ViNT scores imagined subgoals, or
the goal's position and heading that a learned head reads from the last imagined latent
and the goal's, :mod:`planners.pose_distance`),
so a printed cost is never mislabelled. ``python eval/costs.py --split val`` measures
which of them ranks CEM candidates best; ``auto`` without LPIPS weights is the latent
MSE, chosen there (40 validation samples: it and pixel MSE rank candidates twice as well
as 1-SSIM, and it needs no decoding).

``world_model_cost`` turns a world model (its base expert alone, or composed with memory
experts over an episode's memory) and a goal into the cost function the CEM planner takes:
it rolls every candidate out ``rollouts`` times with a sliding context and averages the
distances, as in NWM's protocol. Two optional penalties are added: ``length_weight`` per
spacing unit of path, and ``collision_weight`` times the collision risk a
:class:`~planners.collision.ClearanceHead` reads from every imagined frame; with
``clearance_floor`` the same head also acts as a constraint (a rollout that comes closer to
an obstacle than the floor costs far more than any goal distance). An optional
:class:`ProgressTerm` adds the frames of driving to the goal that a
:class:`~planners.progress.ProgressHead` estimates on every imagined frame, reduced over the
rollout, so the plan has a signal before the goal is in view. It charges its
work to an optional :class:`~planners.timing.PlanTimer` (encode, denoise, decode, cost).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from nav_come.compose import rollout
from nav_come.core.geometry import step_actions, waypoints_from_actions
from nav_come.core.metrics import lpips, lpips_available, ssim
from nav_come.memory_bank import EpisodeMemory
from planners.timing import PlanTimer, section

PROGRESS_REDUCTIONS = ("min", "mean", "last")
DISTANCES = ("auto", "lpips", "dssim", "dssim_half", "pixel_mse", "latent_mse", "temporal", "pose")
LEARNED = {"temporal": "gnm", "pose": "pose"}  # learned distances -> their checkpoint folder


class GoalDistance:
    """Distance from predicted frames (N, 3, H, W) in [0, 1] to one goal frame (3, H, W); lower is closer."""

    def __init__(self, kind: str = "auto", lpips_weights: str | None = None, policy=None, pose_head=None):
        """policy: the trained GNM whose distance head the ``temporal`` distance reads; pose_head:
        the :class:`~planners.pose_distance.PoseHead` of the ``pose`` distance."""
        if kind not in DISTANCES:
            raise ValueError(f"unknown goal distance {kind!r}; choose one of {', '.join(DISTANCES)}")
        if kind == "auto":
            kind = "lpips" if lpips_available(lpips_weights) else "latent_mse"
        if kind == "temporal" and policy is None:
            raise ValueError("the temporal goal distance needs a trained GNM (checkpoints/<dataset>/gnm)")
        if kind == "pose" and pose_head is None:
            raise ValueError("the pose goal distance needs a trained pose head (checkpoints/<dataset>/pose)")
        self.kind, self.lpips_weights, self.policy, self.pose_head = kind, lpips_weights, policy, pose_head

    @property
    def name(self) -> str:
        return {"lpips": "LPIPS", "dssim": "1-SSIM (pixels)", "dssim_half": "1-SSIM (pixels, half resolution)",
                "pixel_mse": "MSE (pixels)", "latent_mse": "MSE of autoencoder latents",
                "temporal": "GNM temporal distance (steps)",
                "pose": "learned goal pose from latents (spacing units)"}[self.kind]  # fmt: skip

    @property
    def needs_pixels(self) -> bool:
        return self.kind not in ("latent_mse", "pose")

    @property
    def frames(self) -> int:
        """How many of the newest imagined frames it reads: the policy's context, else the last one."""
        return self.policy.config.context_size if self.kind == "temporal" else 1

    def __call__(self, pred: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """pred: (N, ...) frames or latents, (N, frames, 3, H, W) for ``temporal``; goal: one
        frame or latent (...). Returns (N,)."""
        if self.kind == "temporal":
            with torch.no_grad():
                return self.policy.predict(pred, goal.expand(len(pred), *goal.shape))["distance"].to(pred.device)
        goal = goal.to(pred.device, pred.dtype).expand_as(pred)
        if self.kind == "pose":
            return self.pose_head.distance(pred, goal).to(pred.device)
        if self.kind == "lpips":
            return lpips(pred, goal, weights=self.lpips_weights).flatten()
        if self.kind == "dssim":
            return 1.0 - ssim(pred.clamp(0, 1), goal)
        if self.kind == "dssim_half":  # the coarse layout, not texture the model cannot know 2 s ahead
            return 1.0 - ssim(F.avg_pool2d(pred.clamp(0, 1), 2), F.avg_pool2d(goal, 2))
        return (pred - goal).pow(2).flatten(1).mean(1)


def reduce_progress(steps: torch.Tensor, reduce: str) -> torch.Tensor:
    """Per-frame estimates (B, K) -> (B,): ``min``, ``mean`` or ``last`` over a rollout's frames."""
    if reduce == "min":
        return steps.min(1).values
    return steps.mean(1) if reduce == "mean" else steps[:, -1]


class ProgressTerm:
    """``weight`` x a rollout's estimated frames to the goal: the progress head reads every imagined
    frame, and ``reduce`` combines them: ``min`` (the nearest the rollout comes to the goal), ``mean``
    (the whole way), ``last`` (where it ends)."""

    def __init__(self, head, weight: float, reduce: str = "min"):
        if reduce not in PROGRESS_REDUCTIONS:
            raise ValueError(f"unknown progress reduction {reduce!r}; choose one of {', '.join(PROGRESS_REDUCTIONS)}")
        if not weight >= 0:
            raise ValueError(f"the progress weight must be >= 0, got {weight}")
        self.head, self.weight, self.reduce = head, float(weight), reduce

    @property
    def name(self) -> str:
        return f"{self.weight:g} x {self.reduce} estimated frames to the goal"

    def frames(self, latents: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Imagined latents (B, K, c, h, w) and the goal latent (c, h, w) -> (B,) the reduced estimate (frames)."""
        B, K = latents.shape[:2]
        return reduce_progress(self.head.steps(latents.flatten(0, 1), goal).view(B, K), self.reduce)

    def __call__(self, latents: torch.Tensor, goal: torch.Tensor, n: int, rollouts: int) -> torch.Tensor:
        """(N*R, K, c, h, w) imagined latents -> (N,) weighted estimate, averaged over each candidate's rollouts."""
        return self.weight * self.frames(latents, goal).view(n, rollouts).mean(1).to(latents.device)


def path_length(deltas: torch.Tensor) -> torch.Tensor:
    """Length of each candidate's path in spacing units: (N, H, 3) -> (N,)."""
    return deltas[..., :2].norm(dim=-1).sum(-1)


def candidate_motions(deltas: torch.Tensor, rollouts: int) -> torch.Tensor:
    """Per-step deltas (N, H, 3) in the start frame -> one-step motions (N*R, H, 3) in the moving frame,
    each candidate repeated for its R stochastic rollouts."""
    N = deltas.shape[0]
    poses = torch.cat([deltas.new_zeros(N, 1, 3), waypoints_from_actions(deltas)], 1)  # (N, H+1, 3)
    return step_actions(poses).repeat_interleave(rollouts, 0)


def _goal_target(world_model, goal: torch.Tensor, needs_pixels: bool, timer: PlanTimer | None) -> torch.Tensor:
    """The goal as a distance compares it: the frame, or its latent (encoded once)."""
    if needs_pixels:
        return goal
    with section(timer, "encode"):
        return world_model.encode(goal[None, None].to(world_model.device))[0, 0]


def _final_cost(world_model, last: torch.Tensor, target: torch.Tensor, distance: GoalDistance, deltas: torch.Tensor,
                rollouts: int, length_weight: float, timer: PlanTimer | None) -> torch.Tensor:
    """Newest imagined latents (N*R, F, c, h, w), F = distance.frames -> (N,) goal distance averaged over
    rollouts, plus the length penalty."""
    if distance.needs_pixels:
        with section(timer, "decode"):
            last = world_model.decode(last)  # (N*R, F, 3, H, W)
    if distance.frames == 1:
        last = last[:, 0]
    with section(timer, "cost"):
        d = distance(last, target).view(deltas.shape[0], rollouts).mean(1)  # (N,)
        return d + length_weight * path_length(deltas).to(d)


def _collision_penalty(collision, weight: float, latents: torch.Tensor, n: int, rollouts: int,
                       timer: PlanTimer | None, floor: float = 0.0) -> torch.Tensor | float:  # fmt: skip
    """weight x the collision risk of imagined latents (N*R, K, c, h, w), plus FLOOR_COST per metre that
    their lowest clearance falls below ``floor``, averaged over rollouts (N,); 0 when both are off."""
    if collision is None or (weight == 0 and floor == 0):
        return 0.0
    from planners.collision import FLOOR_COST

    with section(timer, "cost"):
        c = weight * collision.risk(latents) if weight else 0.0
        if floor:
            c = c + FLOOR_COST * collision.breach(latents, floor)
        return c.view(n, rollouts).mean(1)


def world_model_cost(
    world_model,
    start: EpisodeMemory | torch.Tensor,
    goal: torch.Tensor,
    distance: GoalDistance,
    rollouts: int = 3,
    generator: torch.Generator | None = None,
    length_weight: float = 0.0,
    timer: PlanTimer | None = None,
    collision=None,
    collision_weight: float = 0.0,
    denoiser=None,
    progress: ProgressTerm | None = None,
    route=None,
    clearance_floor: float = 0.0,
    imagine: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The CEM cost of every world-model method: per-step deltas (N, H, 3) in the start frame ->
    (N,) mean goal distance (plus the penalties).

    start: the episode whose newest real frames start every rollout (an
    :class:`~nav_come.memory_bank.EpisodeMemory`, already encoded), or context frames
    (1, C, 3, H, W) / latents (1, C, c, h, w) with no episode (encoded once here); goal: (3, H, W)
    frame in [0, 1]; denoiser: what imagines, a :class:`~nav_come.compose.ComposedDenoiser`
    (None: the world model's base expert alone, NWM). Every candidate × rollout runs in ONE
    rollout (batch N*R, :func:`nav_come.compose.rollout`) with the world model's sampler and
    sampler steps; the world model decodes (and encodes a latent goal). clearance_floor: metres of
    imagined clearance every frame must keep (:meth:`~planners.collision.ClearanceHead.breach`;
    needs ``collision``; 0: off). imagine: per-step deltas (N, H, 3) -> latents (N, H, c, h, w) of
    the frames at every waypoint, used instead of the denoiser's rollouts (a perfect world model:
    ``eval/perfect.py`` passes the views the simulator renders; each candidate's frames then
    stand for all its R rollouts).
    """
    context = None
    if isinstance(start, torch.Tensor):
        with section(timer, "encode"):
            context = world_model.context_latents(start, 1)  # (1, C, c, h, w)
        start = None
    denoiser = denoiser if denoiser is not None else world_model.base_expert()
    target = _goal_target(world_model, goal, distance.needs_pixels, timer)
    needs_latent = (progress is not None and progress.weight) or (route is not None and route.weight)
    if needs_latent:
        goal_latent = target if not distance.needs_pixels else _goal_target(world_model, goal, False, timer)
    route_value = None
    if route is not None and route.weight and start is not None:
        with section(timer, "cost"):
            route_value = route.plan_value(start.latents, start.poses.numpy(), goal_latent)

    def cost(deltas: torch.Tensor) -> torch.Tensor:
        if imagine is not None:
            latents = imagine(deltas).repeat_interleave(rollouts, 0)  # (N*R, H, c, h, w)
        else:
            steps = candidate_motions(deltas, rollouts).to(world_model.device)  # (N*R, H, 3)
            with section(timer, "denoise"):
                latents = rollout(denoiser, start, steps, world_model.sampler_steps, generator, world_model.sampler,
                                  context=context)  # fmt: skip
        last = latents[:, -distance.frames :]  # (N*R, F, c, h, w): the final frame(s) are compared
        c = _final_cost(world_model, last, target, distance, deltas, rollouts, length_weight, timer)
        c = c + _collision_penalty(collision, collision_weight, latents, len(deltas), rollouts, timer, clearance_floor)
        if progress is not None and progress.weight:
            with section(timer, "cost"):
                c = c + progress(latents, goal_latent, len(deltas), rollouts)
        if route_value is not None:
            ends = route.end_positions(start.poses[start.now].numpy(), waypoints_from_actions(deltas)[:, -1],
                                       start.spacing)
            c = c + route.weight * torch.from_numpy(route_value(ends)).to(c)
        return c

    return cost
