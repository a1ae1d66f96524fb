"""Every navigation method behind one call: (context, goal) -> 8 waypoints.

- ``nwm``: the CEM planner over the base world model (NWM protocol);
- ``gnm``, ``nomad``: goal-conditioned policies;
- ``come``, ``nwm+stm``, ``nwm+ltm``: the CEM planner over composed memory experts
  (:class:`MemoryPlanner`: base + STM + LTM + SLTM, base + STM, base + LTM);
- ``nomad+nwm``, ``nomad+come``: the base world model, or CoME, ranking NoMaD's sampled
  trajectories instead of searching with CEM (:class:`RankingPlanner`; NWM's use of a world
  model as a ranker).

Checkpoints live in one folder per dataset, the world model's folder with every expert
and policy beside it (``python -m nav_come.train_expert --out`` writes them there)::

    checkpoints/maze/{ae,base}     the world model (nav_come.world_model)
    checkpoints/maze/{stm,sltm}    trained memory experts (CoME needs both, NWM+STM the STM)
    checkpoints/maze/{ssm,full}    the memory baselines (the memory table only)
    checkpoints/maze/ltm/          optional: the LTM's settings only (see :func:`ltm_expert`)
    checkpoints/maze/{gnm,nomad}   the policies
    checkpoints/maze/distilled/    optional: networks distilled for 1-2 DDIM steps (nav_come.distill)

The LTM has no trained weights: its LoRA adapter starts at zero on the base network and is
trained at test time on the episode, so NWM+LTM needs only ``ae/`` and ``base/``.

``load_method(..., distilled=DIR, sampler_steps=k)`` plans with the networks distilled for k
DDIM steps (``DIR/<k>step/{base,stm,sltm}``, see :mod:`nav_come.distill`): the world model samples
with the distilled base, the memory methods compose the distilled experts (NWM+LTM's adapter sits
on the distilled base).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nav_come.checkpoint import CONFIG, CheckpointError, read_config
from nav_come.compose import CPU_MAX_BATCH, ComposedDenoiser, rollout
from nav_come.core.precision import use_bf16
from nav_come.data.config import METRIC_WAYPOINT_SPACING, data_config
from nav_come.experts import BaseExpert, LTMConfig, LTMExpert, load_expert
from nav_come.geometry import actions_from_waypoints, step_actions, waypoints_from_actions
from nav_come.memory_bank import EpisodeMemory
from planners import cem
from planners.cost import GoalDistance, memory_cost, world_model_cost
from planners.timing import PlanTimer, section

METHODS = ("come", "nwm", "gnm", "nomad", "nwm+stm", "nwm+ltm", "nomad+nwm", "nomad+come")
RANKED_SAMPLES = 32  # NoMaD trajectories the world model ranks per plan (nomad+nwm, nomad+come)
MEMORY_METHODS = {"come": ("stm", "ltm", "sltm"), "nwm+stm": ("stm",), "nwm+ltm": ("ltm",)}  # besides the base
DEFAULT_ALPHAS = {"base": 1.0, "stm": 2.0, "ltm": 2.0, "sltm": 2.0}  # DESIGN §1: about 2 for memory experts
# With ONE sampler step the contrastive term has no later step to correct its extrapolation: on the
# validation worlds (README, "Memory experts") alpha 2 put +STM, +SLTM and CoME 5-6 dB BELOW the base
# at 1 DDIM step, alpha 1 put every composition above it. ``default_alphas`` picks by the step count.
ONE_STEP_ALPHA = 1.0
# Composed coefficients scaled to sum to 1 (a geometric mixture). Chosen on the validation worlds
# (README, "Memory experts"): the plain sum of four experts' scores at 5 DDIM steps fell 4.6 dB
# below the base, the normalised one rose 0.6 dB above it.
DEFAULT_NORMALISE = True
LABELS = {"come": "CoME", "nwm+stm": "NWM+STM", "nwm+ltm": "NWM+LTM"}
LTM_DIR = "ltm"
# The world model's sampler steps per prediction when a caller names none. Chosen on the validation
# worlds (README, "Planning cost"): NWM's ATE did not improve with more DDIM steps (1.383 at 1 step,
# 1.353 at 2, 20 samples), prediction PSNR is highest at 1, and a plan's time grows with the steps.
DEFAULT_SAMPLER_STEPS = 1


class MethodUnavailable(RuntimeError):
    """A method whose checkpoints are not there; the message says how to make them."""


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


class WorldModelPlanner:
    """CEM over the base world model (NWM); :class:`MemoryPlanner` changes what a plan rolls out.

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
    ):
        """length_weight: cost per spacing unit of path; collision: a
        :class:`~planners.collision.ClearanceHead` whose risk over the imagined frames costs
        ``collision_weight`` per metre (:mod:`planners.cost`)."""
        self.world_model, self.cfg, self.distance = world_model, cem_config, distance
        self.rollouts, self.length_weight = rollouts, length_weight
        self.collision, self.collision_weight = collision, collision_weight if collision is not None else 0.0
        self.timer: PlanTimer | None = None

    @property
    def cost_name(self) -> str:
        """What the plan's cost is: the goal distance and the penalties that are on."""
        name = self.distance.name
        if self.length_weight:
            name += f" + {self.length_weight:g} x path length (spacing units)"
        if self.collision_weight:
            name += f" + {self.collision_weight:g} x collision risk (m)"
        return name

    def _start(self, context: torch.Tensor):
        """What every candidate of a plan starts from (the context latents (1, C, c, h, w), encoded
        once per plan), and a note about it (None)."""
        return self.world_model.context_latents(context, 1), None

    def _cost(self, start, goal: torch.Tensor, generator: torch.Generator | None):
        return world_model_cost(self.world_model, start, goal, self.distance, self.rollouts, generator,
                                self.length_weight, self.timer, self.collision, self.collision_weight)  # fmt: skip

    def _imagine(self, start, motions: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Frames (K, 3, H, W) of the rollout of one-step motions (1, K, 3)."""
        return self.world_model.rollout(start, motions, generator=generator)["frames"][0]

    def __call__(
        self,
        context: torch.Tensor,
        goal: torch.Tensor,
        generator: torch.Generator | None = None,
        warm_start: PlanResult | None = None,
        imagine: bool = False,
    ) -> PlanResult:
        """context (1, C, 3, H, W) in [0, 1]; goal (3, H, W)."""
        with section(self.timer, "encode"):
            start, note = self._start(context)
        cost = self._cost(start, goal, generator)
        mean, std = (warm_start.mean, warm_start.std) if warm_start is not None else (None, None)
        res = cem.plan(cost, self.cfg, generator, mean, std)
        imagined = self._imagine(start, _plan_motions(res.deltas), generator) if imagine else None
        return PlanResult(res.waypoints, res.cost, self.cost_name, imagined, res.mean, res.std, note)


class MemoryPlanner(WorldModelPlanner):
    """CEM over composed memory experts: every candidate × rollout in one composed rollout
    (:func:`nav_come.compose.rollout`) from the episode's memory.

    :meth:`observe` gives it the episode so far: the frames the robot saw, oldest first, the
    newest being the current view, with their world poses. They are encoded once there and
    the LTM memorises them there (``observe(..., append=True)`` streams new frames). A plan
    then uses that history, with its newest C frames replaced by the call's context (the
    history gives their poses). Without a history (e.g. ``plan.py``) it plans from the context
    alone, so its memory experts see no memory, and it says so (a warning and
    ``PlanResult.note``). ``last_observe`` holds the time and LTM report of the last observe.
    """

    def __init__(
        self,
        world_model,
        denoiser,
        cem_config: cem.CEMConfig,
        distance: GoalDistance,
        rollouts: int = 3,
        spacing: float = 0.25,
        length_weight: float = 0.0,
        name: str = "come",
        collision=None,
        collision_weight: float = 0.0,
    ):
        super().__init__(world_model, cem_config, distance, rollouts, length_weight, collision, collision_weight)
        self.denoiser, self.spacing, self.name = denoiser, spacing, name
        self.history = None  # EpisodeMemory of the observed frames
        self.last_observe: dict = {}
        self._warned = False

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
        """The episode so far; poses (T, 3) world (x, y metres, yaw radians). See the class docstring."""
        if not append or self.history is None:
            self.reset()
        if len(frames) == 0:
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

    def _start(self, context: torch.Tensor):
        """The episode memory of one plan: the history with the call's context as its newest frames."""
        ctx = self.world_model.context_latents(context, 1)[0]  # (C, c, h, w), encoded once per plan
        C = len(ctx)
        if self.history is not None and len(self.history) >= C:
            latents = torch.cat([self.history.latents[:-C], ctx.to(self.history.latents)])
            return EpisodeMemory(latents, self.history.poses, self.spacing), None
        note = f"{self.name}: no episode history observed; planning from the {C} context frames only"
        if not self._warned:
            warnings.warn(note, stacklevel=3)
            self._warned = True
        return EpisodeMemory(ctx, np.zeros((C, 3)), self.spacing), note  # poses unknown: the robot's frame

    def _cost(self, memory: EpisodeMemory, goal: torch.Tensor, generator: torch.Generator | None):
        return memory_cost(self.world_model, self.denoiser, memory, goal, self.distance, self.rollouts, generator,
                           self.length_weight, self.timer, self.collision, self.collision_weight)  # fmt: skip

    def _imagine(self, memory: EpisodeMemory, motions: torch.Tensor, generator: torch.Generator | None):
        wm = self.world_model
        latents = rollout(self.denoiser, memory, motions.to(wm.device), wm.sampler_steps, generator, wm.sampler)
        return wm.decode(latents[0])


class RankingPlanner:
    """A world model ranks a policy's samples: the policy (NoMaD) proposes ``n`` trajectories for
    the goal, the ``scorer`` (a :class:`WorldModelPlanner`, or a :class:`MemoryPlanner` for
    CoME) rolls each out ``rollouts`` times and scores it with its planning cost, and the
    cheapest is the plan: the world model judges, the policy proposes (``n`` candidates instead
    of CEM's 120 drawn from a fixed prior). Everything else (``observe``, ``world_model``,
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
        with section(scorer.timer, "encode"):
            start, note = scorer._start(context)
        deltas = actions_from_waypoints(proposals)
        costs = scorer._cost(start, goal, generator)(deltas).float().cpu()
        best = int(costs.argmin())
        imagined = scorer._imagine(start, _plan_motions(deltas[best]), generator) if imagine else None
        return PlanResult(proposals[best], float(costs[best]), scorer.cost_name, imagined, note=note)


class PolicyPlanner:
    """A goal-conditioned policy (GNM, NoMaD) behind the same call."""

    def __init__(self, policy):
        self.policy = policy

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


def _need(folder: Path, what: str, command: str) -> Path:
    if not folder.is_dir():
        raise MethodUnavailable(f"{what} checkpoint {folder} is missing; train it with `{command}`")
    return folder


def load_distance(kind: str, ckpt_dir: str | Path, device: str = "cpu", lpips_weights: str | None = None):
    """The :class:`GoalDistance` ``kind``, with the trained network a learned one reads from ``ckpt_dir``
    (``temporal``: the GNM in gnm/; ``pose``: the pose head in pose/)."""
    ckpt_dir = Path(ckpt_dir)
    if kind == "temporal":
        from planners.policy_common import load_policy

        gnm = _need(ckpt_dir / "gnm", "GNM (the temporal distance's)", f"python -m planners.train_policy --policy gnm "
                    f"--data DATA --out {ckpt_dir / 'gnm'}")  # fmt: skip
        return GoalDistance(kind, policy=load_policy(gnm, device=device))
    if kind == "pose":
        from planners.pose_distance import load_pose_head

        head = _need(ckpt_dir / "pose", "pose head (the pose distance's)", f"python -m planners.pose_distance "
                     f"--data DATA --ckpt {ckpt_dir} --out {ckpt_dir / 'pose'}")  # fmt: skip
        return GoalDistance(kind, pose_head=load_pose_head(head, device))
    return GoalDistance(kind, lpips_weights)


# ---------------------------------------------------------------------- memory experts


def _ltm_config(folder: Path):
    """The LTMConfig in ``folder/config.json`` (weights beside it, if any, are not read)."""
    path = folder / CONFIG
    try:
        header = json.loads(path.read_text())
        if header.get("kind") != "ltm":
            raise ValueError(f"kind is {header.get('kind')!r}, not 'ltm'")
        return LTMConfig(**header["config"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a valid LTM config ({e}); write it with experts.save_expert") from e


def ltm_expert(ckpt_dir: str | Path, network, stm=None):
    """The LTM expert on ``network`` (the base expert's DiT, in place, so that the base, the LTM
    and its partner run in one forward).

    Convention: ``ckpt_dir/ltm/config.json`` (an ``ltm`` checkpoint config, as
    ``nav_come.experts.save_expert`` writes it; a ``model.safetensors`` beside it is ignored)
    sets the adapter and test-time training (rank, steps per frame, lr, ``exclude_recent``);
    its ``net`` must be the base's config. Without it: the LTMConfig defaults, with
    ``exclude_recent`` = context + the STM's window when an STM is given.
    """
    folder = Path(ckpt_dir) / LTM_DIR
    if folder.is_dir():
        config = _ltm_config(folder)
        if config.net != network.config:
            raise CheckpointError(f"{folder} was made for another base network; re-export it from {ckpt_dir}/base")
        settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "net"}
    else:
        window = getattr(getattr(stm, "config", None), "window", None)
        settings = {"exclude_recent": network.config.context + window} if window else {}
    return LTMExpert.attach(network, **settings)


def _expert_folder(ckpt_dir: Path, name: str, what: str) -> Path:
    command = f"python -m nav_come.train_expert --expert {name} --base {ckpt_dir} --data DATA --out {ckpt_dir}"
    return _need(ckpt_dir / name, what, command)


def trained_expert(ckpt_dir: str | Path, name: str, world_model, device: str | torch.device = "cpu"):
    """A trained memory expert from ``ckpt_dir/<name>`` (MethodUnavailable when missing), checked
    against the world model."""
    ckpt_dir = Path(ckpt_dir)
    expert = load_expert(_expert_folder(ckpt_dir, name, f"{name.upper()} expert"), device)
    mine, base = expert.network.config, world_model.dit.config
    if (mine.latent_channels, mine.latent_size, mine.context) != (base.latent_channels, base.latent_size, base.context):
        raise CheckpointError(f"{ckpt_dir / name} does not fit the world model in {ckpt_dir} (latents, context)")
    return expert


def memory_experts(
    ckpt_dir: str | Path, names, world_model, device: str | torch.device = "cpu", missing: dict | None = None
) -> dict:
    """{"base": BaseExpert(world_model.dit), name: expert, ...} for ``names`` among stm, ltm, sltm,
    ssm, full, all on the world model's schedule and bf16 setting (the LTM's adapter is put on
    the base network in place: once per world model). A missing checkpoint raises
    MethodUnavailable, or with ``missing`` is recorded there ({name: reason}) and left out."""
    experts = {"base": BaseExpert(world_model.dit)}
    for name in names:
        try:
            if name != "ltm":
                experts[name] = trained_expert(ckpt_dir, name, world_model, device)
        except MethodUnavailable as e:
            if missing is None:
                raise
            missing[name] = str(e)
    if "ltm" in names:
        experts["ltm"] = ltm_expert(ckpt_dir, world_model.dit, experts.get("stm"))
    for expert in experts.values():
        expert.schedule, expert.bf16 = world_model.schedule, world_model.bf16
        if isinstance(getattr(expert, "config", None), LTMConfig):  # the LTM memorises at the same precision
            expert.config.bf16 = world_model.bf16
    return {n: experts[n] for n in ("base", *names) if n in experts}


def expert_spacing(ckpt_dir: str | Path, names) -> float | None:
    """Metres per step of the data the trained experts saw (their checkpoint metadata), if recorded."""
    for name in names:
        if name != "ltm" and (Path(ckpt_dir) / name).is_dir():
            spacing = read_config(Path(ckpt_dir) / name)[2].get("spacing")
            if spacing:
                return float(spacing)
    return None


def parse_alphas(items: list[str]) -> dict[str, float]:
    """["stm=2", "ltm=1.5"] -> {"stm": 2.0, "ltm": 1.5}; ValueError names the bad item."""
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in DEFAULT_ALPHAS or not value:
            raise ValueError(f"--alpha takes EXPERT=VALUE with EXPERT in {' '.join(DEFAULT_ALPHAS)}, got {item!r}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"--alpha {item!r}: {value!r} is not a number") from None
    return out


def default_alphas(sampler_steps: int) -> dict[str, float]:
    """The experts' coefficients (base 1) for a sampler with this many steps: ``DEFAULT_ALPHAS``,
    or ``ONE_STEP_ALPHA`` for every memory expert with a one-step sampler."""
    if sampler_steps > 1:
        return dict(DEFAULT_ALPHAS)
    return {n: 1.0 if n == "base" else ONE_STEP_ALPHA for n in DEFAULT_ALPHAS}


def load_collision(ckpt_dir: str | Path, device: str = "cpu"):
    """The clearance head of the collision penalty, ``ckpt_dir/collision`` (MethodUnavailable when missing)."""
    from planners.collision import load_clearance_head

    command = f"python -m planners.collision --data DATA --ckpt {ckpt_dir} --out {Path(ckpt_dir) / 'collision'}"
    return load_clearance_head(_need(Path(ckpt_dir) / "collision", "collision head", command), device)


def _memory_planner(name, names, ckpt_dir: Path, wm, device, cem_config, distance, rollouts, spacing, alphas,
                    penalties):  # fmt: skip
    experts = memory_experts(ckpt_dir, names, wm, device)
    composed = ComposedDenoiser(experts, {n: alphas[n] for n in experts}, normalise=DEFAULT_NORMALISE,
                                schedule=wm.schedule, bf16=wm.bf16,
                                max_batch=CPU_MAX_BATCH if torch.device(device).type == "cpu" else None)  # fmt: skip
    spacing = spacing or expert_spacing(ckpt_dir, names) or METRIC_WAYPOINT_SPACING["nav_come_sim"]
    return MemoryPlanner(wm, composed, cem_config, distance, rollouts, spacing, name=LABELS[name], **penalties)


def _distilled(names: tuple[str, ...], ckpt_dir: Path, root: Path, steps: int, device, precision: str):
    """The world model on the base distilled for ``steps`` DDIM steps, and the folder of the
    distilled experts (MethodUnavailable when one the method needs is missing)."""
    from nav_come.distill import distilled_dir, distilled_world_model

    folder = distilled_dir(root, steps)
    for expert in ("base", *names):
        if expert != "ltm":
            command = f"python -m nav_come.distill --expert {expert} --ckpt {ckpt_dir} --data DATA --out {root}"
            _need(folder / expert, f"{steps}-step distilled {expert}", command)
    return distilled_world_model(ckpt_dir, root, steps, device, use_bf16(precision, device)), folder


def load_method(
    name: str,
    ckpt_dir: str | Path,
    device: str = "cpu",
    cem_config: cem.CEMConfig | None = None,
    distance: str = "auto",
    sampler_steps: int = DEFAULT_SAMPLER_STEPS,
    rollouts: int = 3,
    lpips_weights: str | None = None,
    spacing: float | None = None,
    alphas: dict[str, float] | None = None,
    distilled: str | Path | None = None,
    length_weight: float = 0.0,
    collision_weight: float = 0.0,
    precision: str = "auto",
) -> WorldModelPlanner | MemoryPlanner | PolicyPlanner:
    """Build the planner of method ``name`` from the checkpoints in ``ckpt_dir``.

    spacing: metres per step of the data planned on (memory methods place observed poses with
    it; default: the experts' training data, else the simulator's); alphas: {expert: alpha}
    of a memory method (default ``default_alphas(sampler_steps)``); distilled: a folder of distilled networks
    (see the module docstring) whose ``sampler_steps`` ones replace the base and the experts;
    length_weight, collision_weight: the CEM cost's penalties (:mod:`planners.cost`; a collision
    weight above 0 needs ``ckpt_dir/collision``, :mod:`planners.collision`). Policies ignore them.
    precision: auto | fp32 | bf16 of the world model and the experts (:mod:`nav_come.core.precision`).
    """
    name = name.lower()
    ckpt_dir = Path(ckpt_dir)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    if name.startswith("nomad+"):  # the world model (or CoME) ranks NoMaD's samples
        kwargs = dict(cem_config=cem_config, distance=distance, sampler_steps=sampler_steps, rollouts=rollouts,
                      lpips_weights=lpips_weights, spacing=spacing, alphas=alphas, distilled=distilled,
                      length_weight=length_weight, collision_weight=collision_weight, precision=precision)  # fmt: skip
        scorer = load_method(name.removeprefix("nomad+"), ckpt_dir, device, **kwargs)
        return RankingPlanner(load_method("nomad", ckpt_dir, device).policy, scorer)
    if name in ("gnm", "nomad"):
        from planners.policy_common import load_policy

        folder = _need(
            ckpt_dir / name,
            name.upper() if name == "gnm" else "NoMaD",
            f"python -m planners.train_policy --policy {name} --data DATA --out {ckpt_dir / name}",
        )
        return PolicyPlanner(load_policy(folder, device=device))
    from nav_come.world_model import WorldModel

    _need(ckpt_dir / "base", "world model", f"python -m nav_come.train --data DATA --out {ckpt_dir}")
    alphas = {**default_alphas(sampler_steps), **(alphas or {})}
    names = tuple(n for n in MEMORY_METHODS.get(name, ()) if alphas[n] != 0)  # alpha 0 leaves an expert out
    for expert in names:
        if expert != "ltm":
            _expert_folder(ckpt_dir, expert, f"{LABELS[name]}'s {expert.upper()} expert")
    if distilled is None:
        wm = WorldModel.from_pretrained(ckpt_dir, device=device, sampler_steps=sampler_steps, precision=precision)
        experts_dir = ckpt_dir
    else:
        wm, experts_dir = _distilled(names, ckpt_dir, Path(distilled), sampler_steps, device, precision)
    cem_config = cem_config or cem.CEMConfig.for_dataset(data_config("nav_come_sim"))  # the shipped models' data
    goal_distance = load_distance(distance, ckpt_dir, device, lpips_weights)
    collision = load_collision(ckpt_dir, device) if collision_weight else None
    penalties = {"length_weight": length_weight, "collision": collision, "collision_weight": collision_weight}
    if name in MEMORY_METHODS:
        return _memory_planner(name, names, experts_dir, wm, device, cem_config, goal_distance, rollouts, spacing,
                               alphas, penalties)  # fmt: skip
    return WorldModelPlanner(wm, cem_config, goal_distance, rollouts, **penalties)
