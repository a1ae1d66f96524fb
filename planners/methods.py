"""Every navigation method behind one call: (context, goal) -> 8 waypoints.

- ``nwm``, ``come``, ``nwm+stm``, ``nwm+ltm``: the CEM planner (:class:`WorldModelPlanner`) over
  a composition of experts: the base world model alone (NWM protocol), or with memory experts
  (base + STM + LTM + SLTM, base + STM, base + LTM);
- ``gnm``, ``nomad``: goal-conditioned policies;
- ``nomad+nwm``, ``nomad+come``: the base world model, or CoME, ranking NoMaD's sampled
  trajectories instead of searching with CEM (:class:`RankingPlanner`; NWM's use of a world
  model as a ranker).

Checkpoints live in one folder per dataset, the world model's folder with every expert
and policy beside it (``python -m nav_come.train_expert --out`` writes them there)::

    checkpoints/maze/{ae,base}     the world model (nav_come.world_model)
    checkpoints/maze/{stm,sltm}    trained memory experts (CoME needs the SLTM, NWM+STM the STM)
    checkpoints/maze/{ssm,full}    the memory baselines (the memory table only)
    checkpoints/maze/ltm/          optional: the LTM's settings only (see :func:`ltm_expert`)
    checkpoints/maze/{gnm,nomad}   the policies
    checkpoints/maze/distilled/    optional, not shipped: networks distilled for 1-2 DDIM steps (nav_come.distill)

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
from pathlib import Path

import torch

from nav_come.compose import CPU_MAX_BATCH, ComposedDenoiser
from nav_come.core.checkpoint import CONFIG, CheckpointError, read_config
from nav_come.core.data.config import METRIC_WAYPOINT_SPACING, data_config
from nav_come.core.layout import BASE_DIR, LTM_DIR, CheckpointLayout, MissingCheckpoint
from nav_come.core.precision import quantize_int8, resolve, use_bf16
from nav_come.experts import BaseExpert, LTMConfig, LTMExpert, load_expert
from planners import cem
from planners.config import (
    BY_LABEL,
    CEM_LABELS,
    DEFAULT_ALPHAS,
    DEFAULT_NORMALISE,
    DEFAULT_SAMPLER_STEPS,
    LABELS,
    MEMORY_METHODS,
    METHODS,
    ONE_STEP_ALPHA,
    RANKED_SAMPLES,
    REGISTRY,
    TABLE,
    Method,
    PlanConfig,
    default_alphas,
    method,
    parse_alphas,
    relevance_weights,
)
from planners.cost import GoalDistance, ProgressTerm
from planners.planner import Planner, PlanResult, PolicyPlanner, PolicyProposals, RankingPlanner, WorldModelPlanner

__all__ = ["BY_LABEL", "CEM_LABELS", "DEFAULT_ALPHAS", "DEFAULT_NORMALISE", "DEFAULT_SAMPLER_STEPS", "LABELS",
           "MEMORY_METHODS", "METHODS", "ONE_STEP_ALPHA", "RANKED_SAMPLES", "REGISTRY", "TABLE", "Method",
           "MethodUnavailable", "PlanConfig", "PlanResult", "Planner", "PolicyPlanner", "RankingPlanner",
           "WorldModelPlanner", "default_alphas", "load_distance", "load_method", "memory_experts", "method",
           "parse_alphas", "quantize_planner", "trained_expert"]  # fmt: skip

MethodUnavailable = MissingCheckpoint  # a method whose checkpoints are not there; the message says how to make them


def load_distance(kind: str, ckpt_dir: str | Path, device: str = "cpu", lpips_weights: str | None = None):
    """The :class:`GoalDistance` ``kind``, with the trained network a learned one reads from ``ckpt_dir``
    (``temporal``: the GNM in gnm/; ``pose``: the pose head in pose/)."""
    layout = CheckpointLayout(ckpt_dir)
    if kind == "temporal":
        from planners.policy_common import load_policy

        gnm = layout.need("gnm", "GNM (the temporal distance's)")
        return GoalDistance(kind, policy=load_policy(gnm, device=device))
    if kind == "pose":
        from planners.pose_distance import load_pose_head

        return GoalDistance(kind, pose_head=load_pose_head(layout.need("pose"), device))
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


def trained_expert(ckpt_dir: str | Path, name: str, world_model, device: str | torch.device = "cpu"):
    """A trained memory expert from ``ckpt_dir/<name>`` (MethodUnavailable when missing), checked
    against the world model."""
    ckpt_dir = Path(ckpt_dir)
    expert = load_expert(CheckpointLayout(ckpt_dir).need(name), device)
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


def load_progress(ckpt_dir: str | Path, weight: float, reduce: str, device: str = "cpu"):
    """The goal-progress term of the cost from ``ckpt_dir/progress`` (MethodUnavailable when missing)."""
    from planners.progress import load_progress_head

    return ProgressTerm(load_progress_head(CheckpointLayout(ckpt_dir).need("progress"), device), weight, reduce)


def load_collision(ckpt_dir: str | Path, device: str = "cpu"):
    """The clearance head of the collision penalty, ``ckpt_dir/collision`` (MethodUnavailable when missing)."""
    from planners.collision import load_clearance_head

    return load_clearance_head(CheckpointLayout(ckpt_dir).need("collision"), device)


def _distilled(names: tuple[str, ...], layout: CheckpointLayout, steps: int, device, precision: str):
    """The world model on the base distilled for ``steps`` DDIM steps, and the folder of the
    distilled experts (MethodUnavailable when one the method needs is missing)."""
    from nav_come.distill import distilled_world_model

    for expert in ("base", *names):
        if expert != "ltm":
            layout.need(expert, steps=steps)
    bf16 = use_bf16(precision, device)
    return distilled_world_model(layout.root, layout.distilled_root, steps, device, bf16), layout.distilled(steps)


def seeded_search(layout: CheckpointLayout, config: PlanConfig, cem_config: cem.CEMConfig, device) -> dict:
    """The proposer (NoMaD's samples, GNM's prediction) and SeededConfig of ``config.search == "seeded"``."""
    from planners.policy_common import load_policy

    why = "the seeded search proposes with it; --search paper plans without the policies"
    nomad = load_policy(layout.need("nomad", f"NoMaD ({why})"), device=device) if config.proposals_nomad else None
    gnm = load_policy(layout.need("gnm", f"GNM ({why})"), device=device) if config.proposals_gnm else None
    proposer = PolicyProposals(nomad, gnm, config.proposals_nomad, config.proposals_gnm)
    seeded = cem.SeededConfig(cem_config, config.prior_draws, config.refine, cem_config.top_k, config.seeded_iterations)
    return {"proposer": proposer, "seeded": seeded}


def route_policy(m: Method, policy, layout: CheckpointLayout, config: PlanConfig, device):
    """NoMaD's samples ranked by the memory route (``--route-weight`` on a policy): the map without
    the world model (:class:`planners.memory_route.RoutePolicyPlanner`)."""
    from nav_come.core.checkpoint import load_checkpoint
    from planners.memory_route import MemoryRoute, RoutePolicyPlanner

    if m.key != "nomad":
        raise ValueError(f"--route-weight ranks a sampling policy's trajectories; {m.label} predicts one: use it "
                         "with NoMaD or a world-model method")  # fmt: skip
    ae = load_checkpoint(layout.need("ae", "the autoencoder (it locates the goal in memory)"), "ae", device)[0]
    spacing = config.spacing or METRIC_WAYPOINT_SPACING["nav_come_sim"]
    return RoutePolicyPlanner(policy, ae.eval(), MemoryRoute(config.route_weight), spacing, RANKED_SAMPLES, m.label)


def load_method(name: str, ckpt_dir: str | Path, device: str = "cpu", config: PlanConfig | None = None,
                **settings) -> Planner:  # fmt: skip
    """The planner of method ``name`` (a key or a table label, :data:`REGISTRY`) from the
    checkpoints in ``ckpt_dir`` (:mod:`nav_come.core.layout`), built with ``config`` and any
    :class:`PlanConfig` field given by keyword over it."""
    m = method(name)
    config = dataclasses.replace(config or PlanConfig(), **settings)
    layout = CheckpointLayout(ckpt_dir)
    if m.kind == "ranking":  # the world model (or CoME) ranks NoMaD's samples
        scorer = load_method(m.key.removeprefix("nomad+"), ckpt_dir, device, config)
        return RankingPlanner(load_method("nomad", ckpt_dir, device).policy, scorer)
    if m.kind == "policy":
        from planners.policy_common import load_policy

        policy = load_policy(layout.need(m.key), device=device)
        if not config.route_weight:
            return PolicyPlanner(policy)
        return route_policy(m, policy, layout, config, device)
    from nav_come.world_model import WorldModel

    layout.need(BASE_DIR)
    alphas = config.resolved_alphas()
    names = tuple(n for n in m.experts if alphas.get(n, 1.0) != 0)  # alpha 0 leaves an expert out
    for expert in names:
        if expert != "ltm":
            layout.need(expert, f"{m.label}'s {expert.upper()} expert")
    if config.distilled is None:
        wm = WorldModel.from_pretrained(layout.root, device=device, sampler_steps=config.sampler_steps,
                                        precision=config.precision)  # fmt: skip
        experts_dir = layout.root
    else:
        wm, experts_dir = _distilled(names, CheckpointLayout(ckpt_dir, config.distilled), config.sampler_steps, device,
                                     config.precision)  # fmt: skip
    cem_config = config.cem_config or cem.CEMConfig.for_dataset(data_config("nav_come_sim"))  # the shipped models'
    distance = load_distance(config.distance, ckpt_dir, device, config.lpips_weights)
    collision = load_collision(ckpt_dir, device) if config.collision_weight or config.clearance_floor else None
    penalties = {"length_weight": config.length_weight, "collision": collision,
                 "collision_weight": config.collision_weight, "clearance_floor": config.clearance_floor}
    if config.progress_weight:
        penalties["progress"] = load_progress(ckpt_dir, config.progress_weight, config.progress_reduce, device)
    if config.route_weight:
        from planners.memory_route import MemoryRoute

        penalties["route"] = MemoryRoute(config.route_weight)
    if (m.search or config.search) == "seeded":
        penalties |= seeded_search(layout, config, cem_config, device)
    if not names:
        planner = WorldModelPlanner(wm, cem_config, distance, config.rollouts, **penalties)
        return quantize_planner(planner) if resolve(config.precision, device) == "int8" else planner
    experts = memory_experts(experts_dir, names, wm, device)
    if not m.base:
        experts.pop("base")
    weights = {n: w for n, w in relevance_weights(config.resolved_relevance()).items() if n in experts}
    coefficients = {n: alphas.get(n, 1.0) for n in experts}
    composed = ComposedDenoiser(experts, coefficients, weights or None, normalise=DEFAULT_NORMALISE,
                                schedule=wm.schedule, bf16=wm.bf16,
                                max_batch=CPU_MAX_BATCH if torch.device(device).type == "cpu" else None)  # fmt: skip
    spacing = config.spacing or expert_spacing(layout.root, names) or METRIC_WAYPOINT_SPACING["nav_come_sim"]
    planner = WorldModelPlanner(wm, cem_config, distance, config.rollouts, denoiser=composed, spacing=spacing,
                                name=m.label, **penalties)  # fmt: skip
    return quantize_planner(planner) if resolve(config.precision, device) == "int8" else planner


def quantize_planner(planner: WorldModelPlanner) -> WorldModelPlanner:
    """``planner`` imagining at ``--precision int8``, in place: the linear layers of its denoisers
    at dynamic int8 (:func:`nav_come.core.precision.quantize_int8`), the base network's unless an
    LTM adapts it at test time (the adapter trains on it), and no bf16 autocast anywhere."""
    experts = planner.denoiser.experts
    if "ltm" not in experts:
        quantize_int8(planner.world_model.dit)
    for name, expert in experts.items():
        if name not in ("base", "ltm"):
            quantize_int8(expert.network)
        expert.bf16 = False
        if isinstance(getattr(expert, "config", None), LTMConfig):
            expert.config.bf16 = False
    planner.denoiser.bf16 = False
    planner.world_model.bf16, planner.world_model.int8 = False, True
    return planner
