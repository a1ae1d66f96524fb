"""What the learned waypoint policies (GNM, NoMaD) share: the policy contract and its
registry, the config base, the image encoder and the waypoint encodings.

**Contract.** ``policy.predict(context, goal, generator=None)`` takes ``context``
(B, C, 3, H, W) float frames in [0, 1], oldest to newest (the last one is the current
frame), and ``goal`` (B, 3, H, W); it returns ``{"waypoints": (B, K, 3), "distance": (B,)
or None}``. Waypoints are ``(x, y, yaw)`` of the next K frames in the robot frame of the
current frame, xy in spacing units, yaw in radians: the convention of
``TrajectoryDataset``'s ``rel_poses`` (docs/design.md §2). The distance is the predicted number
of steps to the goal. ``policy.loss(batch, generator)`` is the training objective on a
collated ``TrajectoryDataset`` batch.

**Checkpoints** use :mod:`nav_come.core.checkpoint` (kind = the policy name):
``policy.save(dir)`` writes ``dir/model.safetensors`` and ``dir/config.json`` and
``load_policy(dir)`` rebuilds the policy from them alone.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nav_come.core.checkpoint import CheckpointError, load_checkpoint, read_config, register_kind, save_checkpoint_files
from nav_come.core.data import poses
from nav_come.core.geometry import actions_from_waypoints, se2_relative

BUILTIN_MODULES = ("planners.gnm", "planners.nomad")  # each registers its policy on import

# ----------------------------------------------------------------------------- config


@dataclass
class PolicyConfig:
    """Fields every policy config has (subclasses add their own).

    context_size: C, frames t-C+1..t given to the policy; the last is the current frame.
    pred_len: K, predicted waypoints (frames t+1..t+K).
    image_size: side of the square input frames; other sizes are resized by ``predict``.
    widths: channels of the conv encoder's stem and of each stage after it (each halves H, W).
    depths: inverted-residual blocks per stage, ``len(widths) - 1`` entries.
    feature_dim: size of the image encoder's output vector.
    preset: name of the preset it was built from (informative).
    """

    context_size: int = 4
    pred_len: int = 8
    image_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (1, 2, 2)
    feature_dim: int = 256
    preset: str = "custom"

    def __post_init__(self) -> None:
        self.widths, self.depths = tuple(int(w) for w in self.widths), tuple(int(d) for d in self.depths)
        name = type(self).__name__
        for field in ("context_size", "pred_len", "image_size", "feature_dim"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"{name}.widths needs >= 2 positive channel counts, got {self.widths}")
        if len(self.depths) != len(self.widths) - 1 or min(self.depths) < 1:
            raise ValueError(f"{name}.depths needs {len(self.widths) - 1} entries >= 1, got {self.depths}")
        if self.image_size % 2 ** len(self.widths):
            raise ValueError(
                f"{name}.image_size {self.image_size} must be a multiple of {2 ** len(self.widths)} "
                f"(the encoder halves it {len(self.widths)} times)"
            )


# ----------------------------------------------------------------------------- image encoder


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 8 groups where they divide (NoMaD swaps BatchNorm for GroupNorm too)."""
    return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)


class MBConv(nn.Module):
    """EfficientNet's inverted residual without squeeze-excite: (B, c_in, H, W) -> (B, c_out, H/s, W/s).

    fused=False: 1x1 expand, 3x3 depthwise (with the stride), 1x1 project (MBConv).
    fused=True: 3x3 expand (with the stride), 1x1 project (EfficientNetV2's Fused-MBConv:
    faster at high resolution, where depthwise convolutions are memory-bound; 3x here on CPU).
    The residual is used when the shape is kept.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int, fused: bool = False):
        super().__init__()
        hidden = c_in * expand
        if fused:
            layers = [nn.Conv2d(c_in, hidden, 3, stride, 1, bias=False), group_norm(hidden), nn.SiLU()]
        else:
            layers = [nn.Conv2d(c_in, hidden, 1, bias=False), group_norm(hidden), nn.SiLU()]
            layers += [
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                group_norm(hidden),
                nn.SiLU(),
            ]
        self.block = nn.Sequential(*layers, nn.Conv2d(hidden, c_out, 1, bias=False), group_norm(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class ConvEncoder(nn.Module):
    """Small EfficientNetV2-like encoder: (B, in_channels, H, W) in [-1, 1] -> (B, out_dim).

    A stride-2 3x3 stem to ``widths[0]``, then one stage per further width, each starting
    with a stride-2 block and holding ``depths[i]`` blocks: Fused-MBConv (expand 2) in the
    first stage, MBConv (expand 4) after it; global average pooling and a linear projection.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], depths: tuple[int, ...], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False), group_norm(widths[0])]
        layers.append(nn.SiLU())
        for i, (c_in, c_out, depth) in enumerate(zip(widths[:-1], widths[1:], depths, strict=True)):
            fused, expand = i == 0, 2 if i == 0 else 4
            layers.append(MBConv(c_in, c_out, 2, expand, fused))
            layers += [MBConv(c_out, c_out, 1, expand, fused) for _ in range(depth - 1)]
        layers += [nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(widths[-1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x))  # (B, out_dim)


# ----------------------------------------------------------------------------- waypoint encodings


def to_xycs(waypoints: torch.Tensor) -> torch.Tensor:
    """(..., K, 3) (x, y, yaw) -> (..., K, 4) (x, y, cos yaw, sin yaw), GNM's action label."""
    yaw = waypoints[..., 2]
    return torch.cat([waypoints[..., :2], torch.stack([yaw.cos(), yaw.sin()], -1)], -1)


def from_xycs(xycs: torch.Tensor) -> torch.Tensor:
    """(..., K, 4) (x, y, cos, sin) -> (..., K, 3) (x, y, yaw); yaw = atan2(sin, cos), no need for unit norm."""
    return torch.cat([xycs[..., :2], torch.atan2(xycs[..., 3], xycs[..., 2])[..., None]], -1)


def cumulative_xy(deltas: torch.Tensor) -> torch.Tensor:
    """Per-step (dx, dy) -> positions (..., K, 2): the cumulative sum of
    :func:`nav_come.core.geometry.waypoints_from_actions` (deltas in the start frame)."""
    return torch.cumsum(deltas, -2)


def xy_deltas(waypoints: torch.Tensor) -> torch.Tensor:
    """(..., K, 3) waypoints -> (..., K, 2) per-step (dx, dy) in the start frame (NoMaD's ``get_delta``)."""
    return actions_from_waypoints(waypoints)[..., :2]


def normalise(x: torch.Tensor, lo: tuple[float, ...], hi: tuple[float, ...]) -> torch.Tensor:
    """Map [lo, hi] to [-1, 1] per last-axis channel (NoMaD's ``normalize_data``)."""
    lo_t, hi_t = x.new_tensor(lo), x.new_tensor(hi)
    return (x - lo_t) / (hi_t - lo_t) * 2 - 1


def unnormalise(x: torch.Tensor, lo: tuple[float, ...], hi: tuple[float, ...]) -> torch.Tensor:
    """Inverse of :func:`normalise`."""
    lo_t, hi_t = x.new_tensor(lo), x.new_tensor(hi)
    return (x + 1) / 2 * (hi_t - lo_t) + lo_t


def delta_range(trajectories: list, pred_len: int, spacing: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """(min, max) of the per-step (dx, dy) of every K-step window's GT waypoints, spacing units.

    trajectories: objects with ``position`` (T, 2) metres and ``yaw`` (T,), e.g.
    ``TrajectoryDataset.trajectories``. The data stats NoMaD normalises its actions with.
    """
    deltas = []
    for tr in trajectories:
        world = poses(tr.position, tr.yaw)  # (T, 3)
        n = len(world) - pred_len
        if n < 1:
            continue
        rel = np.stack([se2_relative(world[:n], world[k : n + k]) for k in range(1, pred_len + 1)], 1)  # (n, K, 3)
        rel[..., :2] /= spacing
        deltas.append(actions_from_waypoints(rel)[..., :2].reshape(-1, 2))
    if not deltas:
        raise ValueError(f"no trajectory has more than {pred_len} frames to compute action statistics from")
    d = np.concatenate(deltas)  # (N, 2)
    lo, hi = d.min(0), d.max(0)
    hi = np.maximum(hi, lo + 1e-3)  # a constant channel must not divide by zero
    return (float(lo[0]), float(lo[1])), (float(hi[0]), float(hi[1]))


# ----------------------------------------------------------------------------- policy base + registry


class Policy(nn.Module):
    """Base of every waypoint policy. Subclasses set ``name``, ``config_class`` and
    ``presets`` and implement ``loss`` and ``predict`` (see the module docstring)."""

    name: ClassVar[str]
    config_class: ClassVar[type[PolicyConfig]]
    presets: ClassVar[dict[str, dict[str, Any]]]

    def __init__(self, config: PolicyConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.metadata: dict = {}  # training metadata of a loaded checkpoint (spacing, steps, ...)

    @classmethod
    def make_config(cls, preset: str, **overrides: Any) -> PolicyConfig:
        """The config of a named preset with field overrides."""
        if preset not in cls.presets:
            raise ValueError(f"unknown {cls.name} preset {preset!r}: choose one of {', '.join(cls.presets)}")
        return cls.config_class(**{**cls.presets[preset], "preset": preset, **overrides})

    @classmethod
    def adapt_config(cls, config: PolicyConfig, trajectories: list, spacing: float) -> PolicyConfig:
        """Fill in data statistics from the training trajectories (none by default)."""
        return config

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def predict(
        self, context: torch.Tensor, goal: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor | None]:
        raise NotImplementedError

    def prepare(self, context: torch.Tensor, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Check shapes, resize to ``image_size`` and map [0, 1] to [-1, 1].
        context (B, C, 3, H, W), goal (B, 3, H, W) -> the same at image_size, on the model's device."""
        cfg = self.config
        if context.ndim != 5 or context.shape[1] != cfg.context_size or context.shape[2] != 3:
            raise ValueError(f"context must be (B, {cfg.context_size}, 3, H, W), got {tuple(context.shape)}")
        if goal.shape[0] != context.shape[0] or goal.shape[1:] != context.shape[2:]:
            raise ValueError(f"goal must be (B, 3, H, W) like one context frame, got {tuple(goal.shape)}")
        device = next(self.parameters()).device
        B, C = context.shape[:2]
        frames = torch.cat([context.flatten(0, 1), goal]).to(device, torch.float32)  # (B*C + B, 3, H, W)
        if frames.shape[-2:] != (cfg.image_size, cfg.image_size):
            size = (cfg.image_size, cfg.image_size)
            frames = F.interpolate(frames, size=size, mode="bilinear", antialias=True, align_corners=False)
        frames = frames * 2 - 1  # (B*C + B, 3, S, S)
        return frames[: B * C].reshape(B, C, *frames.shape[1:]), frames[B * C :]

    def save(self, directory: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``; other files
        there (e.g. a training run's ``last/``) are kept. Each file is replaced atomically."""
        return save_checkpoint_files(directory, self, self.name, metadata)


POLICIES: dict[str, type[Policy]] = {}  # name -> class; filled by @register_policy (planners.gnm, planners.nomad)


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make ``cls`` a registered policy and a loadable checkpoint kind."""
    POLICIES[cls.name] = cls
    register_kind(cls.name, cls.config_class, cls)
    return cls


def builtin_policies() -> dict[str, type[Policy]]:
    """The registry with the built-in policies (GNM, NoMaD) imported."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return POLICIES


def load_policy(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Policy:
    """Rebuild a saved policy from its folder; ``policy.metadata`` holds its training metadata."""
    policies = builtin_policies()  # registers their checkpoint kinds before the config is read
    kind, _, _ = read_config(directory)
    if kind not in policies:
        raise CheckpointError(f"{directory} holds a '{kind}' checkpoint, not a policy ({', '.join(policies)})")
    policy, metadata = load_checkpoint(directory, kind, device)
    policy.metadata = metadata
    return policy.eval()
