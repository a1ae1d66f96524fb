"""GNM (Shah et al., ICRA 2023): a goal-conditioned CNN waypoint policy.

The context frames and the goal image are stacked on the channel axis and encoded by
one small EfficientNetV2-like CNN (:class:`planners.policy_common.ConvEncoder`, standing in
for GNM's MobileNetV2). An MLP trunk feeds two heads, as in the original:

- actions: K steps of (dx, dy, cos, sin); positions are the cumulative sums of (dx, dy)
  and (cos, sin) is L2-normalised, so the label is the waypoints' (x, y, cos yaw, sin yaw);
- distance: the temporal distance to the goal in steps.

Loss (GNM's ``alpha = 0.5``): ``alpha * 1e-2 * MSE(distance) + (1 - alpha) * MSE(actions)``.
The 1e-2 brings the squared distance (goals 1..20 steps ahead) to the scale of the
waypoint error. GNM's negative mining (goals from other trajectories) is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from planners.policy_common import ConvEncoder, Policy, PolicyConfig, cumulative_xy, from_xycs, register_policy, to_xycs

DIST_SCALE = 1e-2  # GNM's fixed factor on the distance MSE

GNM_PRESETS: dict[str, dict] = {
    "tiny": dict(image_size=32, widths=(8, 16, 32), depths=(1, 1), feature_dim=32, mlp_dim=32),  # tests
    "small": dict(widths=(32, 64, 128, 256), depths=(1, 2, 3), feature_dim=512, mlp_dim=256),  # 1.1M params
}


@dataclass
class GNMConfig(PolicyConfig):
    """GNM settings (the shared fields are documented on :class:`PolicyConfig`).

    mlp_dim: width of the first trunk layer; the second has ``mlp_dim // 8`` (GNM: 256 -> 32).
    alpha: weight of the distance loss (GNM's ``alpha``); the action loss gets ``1 - alpha``.
    """

    mlp_dim: int = 256
    alpha: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mlp_dim < 8:
            raise ValueError(f"GNMConfig.mlp_dim must be >= 8, got {self.mlp_dim}")
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"GNMConfig.alpha must be in [0, 1), got {self.alpha}")


@register_policy
class GNM(Policy):
    """Stacked context + goal -> CNN -> MLP -> (waypoints, distance)."""

    name = "gnm"
    config_class = GNMConfig
    presets = GNM_PRESETS

    def __init__(self, config: GNMConfig):
        super().__init__(config)
        c = config
        self.encoder = ConvEncoder(3 * (c.context_size + 1), c.widths, c.depths, c.feature_dim)
        hidden = c.mlp_dim // 8
        self.trunk = nn.Sequential(
            nn.Linear(c.feature_dim, c.mlp_dim), nn.ReLU(), nn.Linear(c.mlp_dim, hidden), nn.ReLU()
        )
        self.dist_head = nn.Linear(hidden, 1)
        self.action_head = nn.Linear(hidden, c.pred_len * 4)

    def forward(self, context: torch.Tensor, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context (B, C, 3, S, S), goal (B, 3, S, S), both in [-1, 1] ->
        (actions (B, K, 4) = (x, y, cos yaw, sin yaw) with unit (cos, sin), distance (B,))."""
        B = context.shape[0]
        x = torch.cat([context.flatten(1, 2), goal], 1)  # (B, 3(C+1), S, S)
        h = self.trunk(self.encoder(x))  # (B, mlp_dim // 8)
        raw = self.action_head(h).view(B, self.config.pred_len, 4).float()  # (B, K, 4): dx, dy, cos, sin
        xy = cumulative_xy(raw[..., :2])  # (B, K, 2)
        cs = F.normalize(raw[..., 2:], dim=-1)  # (B, K, 2)
        return torch.cat([xy, cs], -1), self.dist_head(h).squeeze(-1).float()

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """GNM's loss on a batch with ``context``, ``goal``, ``rel_poses`` and ``goal_offset``."""
        context, goal = self.prepare(batch["context"], batch["goal"])
        actions, distance = self(context, goal)
        target = to_xycs(batch["rel_poses"].to(actions.device))  # (B, K, 4)
        dist_loss = F.mse_loss(distance, batch["goal_offset"].to(distance.device).float())
        a = self.config.alpha
        return a * DIST_SCALE * dist_loss + (1 - a) * F.mse_loss(actions, target)

    @torch.no_grad()
    def predict(
        self, context: torch.Tensor, goal: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor | None]:
        """See :mod:`planners.policy_common`; deterministic, so ``generator`` is unused."""
        actions, distance = self(*self.prepare(context, goal))
        return {"waypoints": from_xycs(actions), "distance": distance}  # (B, K, 3), (B,)
