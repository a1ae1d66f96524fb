"""Every navigation method behind one call: (context, goal) -> 8 waypoints.

- ``nwm``: the CEM planner over the base world model (NWM protocol);
- ``gnm``, ``nomad``: goal-conditioned policies;
- ``come``, ``nwm+stm``, ``nwm+ltm``: the CEM planner over composed memory experts (needs their checkpoints).

Checkpoints live in one folder per dataset, e.g. ``checkpoints/maze/{ae,base,gnm,nomad}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nav_come.geometry import step_actions, waypoints_from_actions
from planners import cem
from planners.cost import GoalDistance, world_model_cost

METHODS = ("come", "nwm", "gnm", "nomad", "nwm+stm", "nwm+ltm")


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


class WorldModelPlanner:
    """CEM over a world model: NWM with the base expert, CoME with the composed experts."""

    def __init__(
        self,
        world_model,
        cem_config: cem.CEMConfig,
        distance: GoalDistance,
        rollouts: int = 3,
        length_weight: float = 0.0,
    ):
        self.world_model, self.cfg, self.distance = world_model, cem_config, distance
        self.rollouts, self.length_weight = rollouts, length_weight

    def __call__(
        self,
        context: torch.Tensor,
        goal: torch.Tensor,
        generator: torch.Generator | None = None,
        warm_start: PlanResult | None = None,
        imagine: bool = False,
    ) -> PlanResult:
        """context (1, C, 3, H, W) in [0, 1]; goal (3, H, W)."""
        cost = world_model_cost(
            self.world_model, context, goal, self.distance, self.rollouts, generator, self.length_weight
        )
        mean, std = (warm_start.mean, warm_start.std) if warm_start is not None else (None, None)
        res = cem.plan(cost, self.cfg, generator, mean, std)
        imagined = None
        if imagine:
            poses = torch.cat([torch.zeros(1, 3), waypoints_from_actions(res.deltas)])  # (K+1, 3)
            out = self.world_model.rollout(context, step_actions(poses)[None], generator=generator)
            imagined = out["frames"][0]
        return PlanResult(res.waypoints, res.cost, self.distance.name, imagined, res.mean, res.std)


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


def load_method(
    name: str,
    ckpt_dir: str | Path,
    device: str = "cpu",
    cem_config: cem.CEMConfig | None = None,
    distance: str = "auto",
    sampler_steps: int = 5,
    rollouts: int = 3,
    lpips_weights: str | None = None,
) -> WorldModelPlanner | PolicyPlanner:
    """Build the planner of method ``name`` from the checkpoints in ``ckpt_dir``."""
    name = name.lower()
    ckpt_dir = Path(ckpt_dir)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    if name in ("gnm", "nomad"):
        from planners.policy_common import load_policy

        folder = _need(
            ckpt_dir / name,
            name.upper() if name == "gnm" else "NoMaD",
            f"python -m planners.train_policy --policy {name} --data DATA --out {ckpt_dir / name}",
        )
        return PolicyPlanner(load_policy(folder, device=device))
    if name == "come":
        raise MethodUnavailable(
            "CoME needs the memory-expert checkpoints, which are not shipped yet; "
            "use --method nwm (the base world model) meanwhile"
        )
    from nav_come.world_model import WorldModel

    _need(ckpt_dir / "base", "world model", f"python -m nav_come.train --data DATA --out {ckpt_dir}")
    wm = WorldModel.from_pretrained(ckpt_dir, device=device, sampler_steps=sampler_steps)
    return WorldModelPlanner(wm, cem_config or cem.CEMConfig(), GoalDistance(distance, lpips_weights), rollouts)
