r"""The planners: every method behind one call ``(context, goal) -> PlanResult``.

:class:`WorldModelPlanner` searches with CEM over a world model's imagination (a composition
of experts: NWM is the base alone), :class:`RankingPlanner` lets it rank a policy's samples,
and :class:`PolicyPlanner` wraps a goal-conditioned policy. All three are :class:`Planner`\ s.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from nav_come.compose import ComposedDenoiser, rollout
from nav_come.core.data.config import METRIC_WAYPOINT_SPACING
from nav_come.core.geometry import actions_from_waypoints, step_actions, waypoints_from_actions
from nav_come.memory_bank import EpisodeMemory
from planners import cem
from planners.config import RANKED_SAMPLES
from planners.cost import GoalDistance, ProgressTerm, world_model_cost
from planners.timing import PlanTimer, section


@dataclass
class PlanResult:
    waypoints: torch.Tensor  # (K, 3) spacing units, robot frame of the newest context frame
    cost: float | None = None
    cost_name: str | None = None
    imagined: torch.Tensor | None = None  # (K, 3, H, W) the world model's rollout of the plan
    mean: torch.Tensor | None = None  # CEM state, for warm starts
    std: torch.Tensor | None = None
    note: str | None = None  # e.g. a memory planner that had no history to use


def _plan_motions(deltas: torch.Tensor) -> torch.Tensor:
    """The plan's per-step deltas (K, 3) -> one-step motions (1, K, 3) for a rollout."""
    poses = torch.cat([torch.zeros(1, 3), waypoints_from_actions(deltas)])  # (K+1, 3)
    return step_actions(poses)[None]


@runtime_checkable
class Planner(Protocol):
    """What every method is (:func:`load_method` builds one): ``(context, goal) -> PlanResult``.

    A caller feeds it ``context_frames`` frames of side ``image_size`` (the newest last, in
    [0, 1]) and the goal frame; ``observe`` gives it the episode so far (a no-op where
    ``uses_memory`` is False) and ``reset`` forgets it; ``precision`` is what its networks run at.
    """

    image_size: int
    context_frames: int
    precision: str
    uses_memory: bool

    def __call__(self, context: torch.Tensor, goal: torch.Tensor, generator: torch.Generator | None = None,
                 warm_start: PlanResult | None = None, imagine: bool = False) -> PlanResult: ...  # fmt: skip

    def observe(self, frames, poses=None, append: bool = False) -> None: ...

    def reset(self) -> None: ...


class PolicyProposals:
    """Trajectories that seed a world model's search: ``n_nomad`` of NoMaD's samples for the goal,
    and GNM's prediction with ``n_gnm - 1`` noisy copies of it (Gaussian noise of std ``noise``
    on each step's dx, dy in spacing units and dyaw in radians), as per-step deltas (P, H, 3)."""

    def __init__(self, nomad=None, gnm=None, n_nomad: int = 16, n_gnm: int = 8, noise: float = 0.15):
        if (nomad is None and n_nomad) or (gnm is None and n_gnm):
            raise ValueError("a proposal count above 0 needs its policy (NoMaD, GNM)")
        self.nomad, self.gnm, self.n_nomad, self.n_gnm, self.noise = nomad, gnm, n_nomad, n_gnm, noise

    @torch.no_grad()
    def __call__(self, context: torch.Tensor, goal: torch.Tensor, generator: torch.Generator | None = None):
        """context (1, C, 3, H, W), goal (3, H, W) in [0, 1] -> per-step deltas (P, H, 3)."""
        out = []
        if self.n_nomad:
            n = self.n_nomad
            wp = self.nomad.predict(context.expand(n, *context.shape[1:]), goal[None].expand(n, *goal.shape),
                                    generator=generator)["waypoints"]  # (n, H, 3)  # fmt: skip
            out.append(actions_from_waypoints(wp.float().cpu()))
        if self.n_gnm:
            wp = self.gnm.predict(context, goal[None], generator=generator)["waypoints"].float().cpu()  # (1, H, 3)
            d = actions_from_waypoints(wp).expand(self.n_gnm, -1, -1).clone()
            d[1:] += self.noise * torch.randn(d[1:].shape, generator=generator)  # the first copy exact
            out.append(d)
        return torch.cat(out)


class WorldModelPlanner:
    """CEM over a world model's imagination: the one planner of every world-model method.

    ``denoiser`` is what imagines, a :class:`~nav_come.compose.ComposedDenoiser` of experts. NWM
    is the base expert alone at alpha 1 (the default: the base network, bit for bit); CoME,
    NWM+STM and NWM+LTM compose memory experts with it. Every candidate × rollout of a plan
    runs in one rollout (:func:`nav_come.compose.rollout`) from the episode's memory.

    :meth:`observe` gives it the episode so far: the frames the robot saw, oldest first, the
    newest being the current view, with their world poses. They are encoded once there and
    the LTM memorises them there (``observe(..., append=True)`` streams new frames). A plan
    then uses that history, with its newest C frames replaced by the call's context (the
    history gives their poses). Without a history it plans from the context alone, so memory
    experts see no memory, and a planner that has some says so (a warning and
    ``PlanResult.note``). ``last_observe`` holds the time and LTM report of the last observe.

    ``timer``: a :class:`~planners.timing.PlanTimer` that plans charge their encode, denoise,
    decode and cost time to (None: not timed).
    """

    def __init__(
        self,
        world_model,
        cem_config: cem.CEMConfig,
        distance: GoalDistance,
        rollouts: int = 3,
        length_weight: float = 0.0,
        collision=None,
        collision_weight: float = 0.0,
        denoiser: ComposedDenoiser | None = None,
        spacing: float = METRIC_WAYPOINT_SPACING["nav_come_sim"],
        name: str = "NWM",
        proposer: PolicyProposals | None = None,
        seeded: cem.SeededConfig | None = None,
        progress: ProgressTerm | None = None,
        route=None,
        clearance_floor: float = 0.0,
    ):
        """length_weight: cost per spacing unit of path; collision: a
        :class:`~planners.collision.ClearanceHead` whose risk over the imagined frames costs
        ``collision_weight`` per metre (:mod:`planners.cost`); spacing: metres per spacing unit
        of the observed poses; name: the method, for messages; proposer and seeded: search with
        proposal-seeded CEM (:func:`planners.cem.seeded_plan`) from the proposer's trajectories
        instead of NWM's CEM (``cem_config``); progress: the goal-progress term of the cost
        (:class:`~planners.cost.ProgressTerm`, None: off); route: the route distance to where the
        goal was seen in the observed history (:class:`~planners.memory_route.MemoryRoute`, None:
        off; a planner with one observes the episode even without memory experts); clearance_floor:
        metres of imagined clearance a candidate must keep (needs ``collision``; 0: off)."""
        if (proposer is None) != (seeded is None):
            raise ValueError("proposal-seeded CEM needs both a proposer and its SeededConfig")
        if denoiser is None:
            denoiser = ComposedDenoiser({"base": world_model.base_expert()}, {"base": 1.0},
                                        schedule=world_model.schedule, bf16=world_model.bf16)  # fmt: skip
        self.world_model, self.denoiser, self.cfg, self.distance = world_model, denoiser, cem_config, distance
        self.rollouts, self.length_weight, self.spacing, self.name = rollouts, length_weight, spacing, name
        self.collision, self.collision_weight = collision, collision_weight if collision is not None else 0.0
        self.clearance_floor = clearance_floor if collision is not None else 0.0
        self.proposer, self.seeded, self.progress, self.route = proposer, seeded, progress, route
        self.timer: PlanTimer | None = None
        self.history = None  # EpisodeMemory of the observed frames
        self.last_observe: dict = {}
        self._warned = False

    @property
    def image_size(self) -> int:
        return self.world_model.ae.config.image_size

    @property
    def context_frames(self) -> int:
        return self.world_model.context

    @property
    def precision(self) -> str:
        return self.world_model.precision

    @property
    def uses_memory(self) -> bool:
        """Whether an expert (anything but the base alone) or the route term reads the episode: worth observing."""
        return set(self.denoiser.experts) != {"base"} or (self.route is not None and self.route.weight > 0)

    @property
    def cost_name(self) -> str:
        """What the plan's cost is: the goal distance and the penalties that are on."""
        name = self.distance.name
        if self.length_weight:
            name += f" + {self.length_weight:g} x path length (spacing units)"
        if self.collision_weight:
            name += f" + {self.collision_weight:g} x collision risk (m)"
        if self.clearance_floor:
            name += f", clearance >= {self.clearance_floor:g} m"
        if self.progress is not None and self.progress.weight:
            name += f" + {self.progress.name}"
        if self.route is not None and self.route.weight:
            name += f" + {self.route.name}"
        return name

    # ------------------------------------------------------------------ the episode

    def reset(self) -> None:
        """Forget the episode (the LTM adapter goes back to zero)."""
        self.history = None
        for expert in self.denoiser.experts.values():
            if hasattr(expert, "reset"):
                expert.reset()

    def _latents(self, frames) -> torch.Tensor:
        """(T, 3, H, W) frames in [0, 1], (T, H, W, 3) uint8, or (T, c, h, w) latents -> latents (T, c, h, w)."""
        x = frames if isinstance(frames, torch.Tensor) else torch.as_tensor(np.stack([np.asarray(f) for f in frames]))
        if x.ndim != 4:
            raise ValueError(f"observe needs (T, 3, H, W) or (T, H, W, 3) frames or latents, got {tuple(x.shape)}")
        if tuple(x.shape[1:]) == self.world_model.latent_shape:
            return x.float().to(self.world_model.device)
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.movedim(-1, 1)  # (T, H, W, 3) -> (T, 3, H, W)
        return self.world_model.encode(x[None].to(self.world_model.device))[0]

    def observe(self, frames, poses=None, append: bool = False) -> None:
        """The episode so far; poses (T, 3) world (x, y metres, yaw radians). See the class docstring.
        A planner without memory experts keeps nothing (its plans read the context alone)."""
        if not append or self.history is None:
            self.reset()
        if len(frames) == 0 or not self.uses_memory:
            return
        if poses is None:
            warnings.warn(f"{self.name}: frames observed without poses cannot be placed in memory; "
                          "they are ignored", stacklevel=2)  # fmt: skip
            return
        poses = np.asarray(poses, np.float64).reshape(-1, 3)
        if len(poses) != len(frames):
            raise ValueError(f"observe got {len(frames)} frames but {len(poses)} poses")
        start = time.perf_counter()
        latents = self._latents(frames)  # (T, c, h, w)
        if self.history is None:
            self.history = EpisodeMemory(latents, poses, self.spacing)
        else:
            self.history.append(latents, poses)
        reports = {k: v for k, v in self.denoiser.prepare(self.history).items() if v is not None}  # the LTM's
        self.last_observe = {"frames": len(frames), "seconds": time.perf_counter() - start, **reports}

    # ------------------------------------------------------------------ one plan, in three public steps

    def start(self, context: torch.Tensor) -> tuple[EpisodeMemory, str | None]:
        """The episode memory every candidate of one plan starts from, and a note about it (None).

        context (1, C, 3, H, W) frames in [0, 1] or (1, C, c, h, w) latents, encoded once per plan:
        the observed history with the context as its newest frames, or the context alone (poses
        unknown: the robot's frame)."""
        with section(self.timer, "encode"):
            ctx = self.world_model.context_latents(context, 1)[0]  # (C, c, h, w)
        C = len(ctx)
        if self.history is not None and len(self.history) >= C:
            latents = torch.cat([self.history.latents[:-C], ctx.to(self.history.latents)])
            return EpisodeMemory(latents, self.history.poses, self.spacing), None
        note = None
        if self.uses_memory:
            note = f"{self.name}: no episode history observed; planning from the {C} context frames only"
            if not self._warned:
                warnings.warn(note, stacklevel=3)
                self._warned = True
        return EpisodeMemory(ctx, np.zeros((C, 3)), self.spacing), note

    def cost(self, start: EpisodeMemory, goal: torch.Tensor, generator: torch.Generator | None = None,
             imagine=None):  # fmt: skip
        """The cost function of candidates' per-step deltas (N, H, 3) -> (N,) for a plan from ``start``;
        ``imagine``: frames from elsewhere than the denoiser (:func:`~planners.cost.world_model_cost`)."""
        route = self.route if self.history is not None else None  # only real poses place the goal
        return world_model_cost(self.world_model, start, goal, self.distance, self.rollouts, generator,
                                self.length_weight, self.timer, self.collision, self.collision_weight,
                                self.denoiser, self.progress, route, self.clearance_floor, imagine)  # fmt: skip

    def imagine(self, start: EpisodeMemory, deltas: torch.Tensor, generator: torch.Generator | None = None):
        """Frames (K, 3, H, W) of the rollout of one plan's per-step deltas (K, 3) from ``start``."""
        wm = self.world_model
        latents = rollout(self.denoiser, start, _plan_motions(deltas).to(wm.device), wm.sampler_steps, generator,
                          wm.sampler)  # fmt: skip
        return wm.decode(latents[0])

    def __call__(
        self,
        context: torch.Tensor,
        goal: torch.Tensor,
        generator: torch.Generator | None = None,
        warm_start: PlanResult | None = None,
        imagine: bool = False,
    ) -> PlanResult:
        """context (1, C, 3, H, W) in [0, 1]; goal (3, H, W). ``warm_start`` (the previous plan)
        starts NWM's CEM there; the proposal-seeded search starts from fresh proposals instead."""
        if self.seeded is not None:
            proposals = self.proposer(context, goal, generator)  # (P, H, 3): drawn first, as a ranker does
            start, note = self.start(context)
            res = cem.seeded_plan(self.cost(start, goal, generator), proposals, self.seeded, generator)
            imagined = self.imagine(start, res.deltas, generator) if imagine else None
            return PlanResult(res.waypoints, res.cost, self.cost_name, imagined, note=note)
        start, note = self.start(context)
        mean, std = (warm_start.mean, warm_start.std) if warm_start is not None else (None, None)
        res = cem.plan(self.cost(start, goal, generator), self.cfg, generator, mean, std)
        imagined = self.imagine(start, res.deltas, generator) if imagine else None
        return PlanResult(res.waypoints, res.cost, self.cost_name, imagined, res.mean, res.std, note)


class RankingPlanner:
    """A world model ranks a policy's samples: the policy (NoMaD) proposes ``n`` trajectories for
    the goal, the ``scorer`` (a :class:`WorldModelPlanner`: NWM, or CoME) rolls each out
    ``rollouts`` times and scores it with its planning cost, and the cheapest is the plan: the
    world model judges, the policy proposes (``n`` candidates instead of CEM's 120 drawn from a
    fixed prior). Everything else (``observe``, ``world_model``,
    ``distance``, ...) is the scorer's."""

    def __init__(self, policy, scorer: WorldModelPlanner, n: int = RANKED_SAMPLES):
        self.policy, self.scorer, self.n = policy, scorer, n

    def __getattr__(self, name: str):
        if name == "scorer":  # not set yet: no delegation
            raise AttributeError(name)
        return getattr(self.scorer, name)

    @torch.no_grad()
    def __call__(
        self,
        context: torch.Tensor,
        goal: torch.Tensor,
        generator: torch.Generator | None = None,
        warm_start: PlanResult | None = None,
        imagine: bool = False,
    ) -> PlanResult:
        """context (1, C, 3, H, W) in [0, 1]; goal (3, H, W). ``warm_start`` is not used."""
        n, scorer = self.n, self.scorer
        proposals = self.policy.predict(context.expand(n, *context.shape[1:]), goal[None].expand(n, *goal.shape),
                                        generator=generator)["waypoints"].float().cpu()  # (n, K, 3)  # fmt: skip
        start, note = scorer.start(context)
        deltas = actions_from_waypoints(proposals)
        costs = scorer.cost(start, goal, generator)(deltas).float().cpu()
        best = int(costs.argmin())
        imagined = scorer.imagine(start, deltas[best], generator) if imagine else None
        return PlanResult(proposals[best], float(costs[best]), scorer.cost_name, imagined, note=note)


class PolicyPlanner:
    """A goal-conditioned policy (GNM, NoMaD) behind the same call (fp32, no memory)."""

    precision, uses_memory = "fp32", False

    def __init__(self, policy):
        self.policy = policy

    @property
    def image_size(self) -> int:
        return self.policy.config.image_size

    @property
    def context_frames(self) -> int:
        return self.policy.config.context_size

    def observe(self, frames, poses=None, append: bool = False) -> None:
        """A policy reads its context alone: nothing to keep."""

    def reset(self) -> None:
        """Nothing to forget."""

    @torch.no_grad()
    def __call__(
        self,
        context: torch.Tensor,
        goal: torch.Tensor,
        generator: torch.Generator | None = None,
        warm_start: PlanResult | None = None,
        imagine: bool = False,
    ) -> PlanResult:
        out = self.policy.predict(context, goal[None], generator=generator)
        return PlanResult(out["waypoints"][0].float())
