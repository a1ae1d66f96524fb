"""The learned simulator: autoencoder + base expert denoiser + sampler.

``predict`` makes a batch of one-step predictions; ``rollout`` rolls action sequences out
autoregressively **in latent space**: the context frames are encoded once, each predicted
latent replaces the oldest context latent, and pixels are decoded only at the end.
Both take a context of batch 1 and broadcast it (a view, no copy) over any number of
candidate action sequences, which is how the CEM planner calls them (120 × 3 = 360).

Actions are one-step motions ``(dx, dy, dyaw)``: pose k+1 in the robot frame of pose k,
xy divided by the dataset's ``metric_waypoint_spacing`` (spacing units, docs/design.md §2).
:func:`nav_come.core.geometry.step_actions` gives them (in metres) from a path of poses.

A saved world model is a folder with one checkpoint per part (see :mod:`nav_come.core.checkpoint`)::

    <dir>/ae/{model.safetensors,config.json}     the frozen autoencoder (kind "ae")
    <dir>/base/{model.safetensors,config.json}   the base expert (kind "dit"); its metadata
                                                  holds the noise schedule it was trained with
Memory experts (issue 5) add sibling folders, e.g. ``<dir>/stm/``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from nav_come.autoencoder import Autoencoder
from nav_come.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nav_come.core.precision import autocast, resolve, use_bf16
from nav_come.diffusion import COSINE, SAMPLERS, CosineSchedule, randn
from nav_come.dit import DiT

AE_DIR, BASE_DIR = "ae", "base"
ENCODE_BATCH = 256  # frames per autoencoder call: bounds memory for long or wide inputs


@torch.no_grad()
def encode_frames(ae: Autoencoder, frames: torch.Tensor, bf16: bool | None = None) -> torch.Tensor:
    """(N, 3, H, W) frames (uint8 or float in [0, 1]) -> (N, c, h, w) float32 latents, in chunks.
    bf16: autocast (None: where native, :mod:`nav_come.core.precision`)."""
    device = next(ae.parameters()).device
    with autocast(device, bf16):
        return torch.cat([ae.encode(x.to(device)).float() for x in frames.split(ENCODE_BATCH)])


@torch.no_grad()
def decode_latents(ae: Autoencoder, latents: torch.Tensor, bf16: bool | None = None) -> torch.Tensor:
    """(N, c, h, w) latents -> (N, 3, H, W) float32 frames in [0, 1], in chunks."""
    device = next(ae.parameters()).device
    with autocast(device, bf16):
        return torch.cat([ae.decode(z.to(device)).float() for z in latents.split(ENCODE_BATCH)])


class WorldModel(nn.Module):
    """Frames + one-step actions -> future frames. See the module docstring."""

    def __init__(
        self,
        ae: Autoencoder,
        dit: DiT,
        schedule: CosineSchedule = COSINE,
        sampler_steps: int = 5,
        sampler: str = "ddim",
        bf16: bool | None = None,
    ):
        """bf16: autocast every network call (None: where the device runs bf16 natively)."""
        super().__init__()
        if ae.config.latent_channels != dit.config.latent_channels or ae.config.latent_size != dit.config.latent_size:
            raise ValueError(
                f"autoencoder latents ({ae.config.latent_channels}, {ae.config.latent_size}) do not match the "
                f"denoiser's ({dit.config.latent_channels}, {dit.config.latent_size})"
            )
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: choose one of {sorted(SAMPLERS)}")
        self.ae, self.dit, self.schedule = ae, dit, schedule
        self.sampler_steps, self.sampler, self.bf16 = sampler_steps, sampler, bf16
        self.int8 = False  # set by planners.methods.quantize_planner (--precision int8)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def context(self) -> int:
        return self.dit.config.context

    @property
    def precision(self) -> str:
        """"bf16", "fp32" or "int8": what the networks run at on this device."""
        if self.int8:
            return "int8"
        return resolve({True: "bf16", False: "fp32", None: "auto"}[self.bf16], self.device)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.dit.config
        return (c.latent_channels, c.latent_size, c.latent_size)

    # ------------------------------------------------------------------ pixels <-> latents

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) float in [0, 1] or uint8 -> (B, T, c, h, w) float32 latents."""
        B, T = frames.shape[:2]
        z = encode_frames(self.ae, frames.flatten(0, 1), self.bf16)  # (B*T, c, h, w)
        return z.view(B, T, *z.shape[1:])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(..., c, h, w) latents -> (..., 3, H, W) float32 frames in [0, 1]."""
        x = decode_latents(self.ae, latents.reshape(-1, *latents.shape[-3:]), self.bf16)  # (N, 3, H, W)
        return x.view(*latents.shape[:-3], *x.shape[1:])

    def context_latents(self, context: torch.Tensor, batch: int) -> torch.Tensor:
        """Context frames (B, C, 3, H, W) or latents (B, C, c, h, w) -> latents (batch, C, c, h, w).

        Latents are recognised by their shape. A batch of 1 is broadcast to ``batch``
        without copying; otherwise B must equal ``batch``.
        """
        if context.ndim != 5 or context.shape[1] != self.context:
            raise ValueError(f"context must be (B, {self.context}, ...) frames or latents, got {tuple(context.shape)}")
        z = context.to(self.device).float() if context.shape[2:] == self.latent_shape else self.encode(context)
        if z.shape[0] == batch:
            return z
        if z.shape[0] == 1:
            return z.expand(batch, *z.shape[1:])
        raise ValueError(f"context batch {z.shape[0]} must be 1 or match the action batch {batch}")

    # ------------------------------------------------------------------ sampling

    def base_expert(self):
        """The base network as an expert (:class:`nav_come.experts.BaseExpert`) on this model's
        schedule and precision: what NWM imagines with, alone or composed with memory experts."""
        from nav_come.experts.common import BaseExpert

        expert = BaseExpert(self.dit)
        expert.schedule, expert.bf16 = self.schedule, self.bf16
        return expert

    def denoiser(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """The base expert as a denoiser: ``cond`` holds DiT.forward's keyword arguments."""
        with autocast(x_t.device, self.bf16):
            return self.dit(x_t, t, **cond).float()

    def _sample(
        self,
        ctx: torch.Tensor,
        actions: torch.Tensor,
        shift: int | torch.Tensor,
        generator: torch.Generator | None,
        steps: int | None,
    ) -> torch.Tensor:
        """Latents (B, c, h, w) of the frame ``shift`` steps after ctx's newest."""
        x_T = randn((ctx.shape[0], *self.latent_shape), generator, self.device)
        cond = {"context": ctx, "action": actions.to(self.device).float(), "shift": shift}
        sampler = SAMPLERS[self.sampler]
        return sampler(self.denoiser, x_T, steps or self.sampler_steps, cond, generator, schedule=self.schedule)

    @torch.no_grad()
    def predict(
        self,
        context: torch.Tensor,
        actions: torch.Tensor,
        shift: int | torch.Tensor = 1,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        decode: bool = True,
    ) -> torch.Tensor:
        """A batch of one-step predictions.

        context: (B or 1, C, 3, H, W) frames or (B or 1, C, c, h, w) latents, oldest first;
        actions: (B, 3) motion from the newest context pose to the target pose (spacing
        units); shift: frames ahead, int or (B,). Returns frames (B, 3, H, W) in [0, 1],
        or latents (B, c, h, w) when ``decode`` is False.
        """
        ctx = self.context_latents(context, actions.shape[0])  # (B, C, c, h, w)
        z = self._sample(ctx, actions, shift, generator, steps)
        return self.decode(z) if decode else z

    @torch.no_grad()
    def rollout(
        self,
        context: torch.Tensor,
        step_actions: torch.Tensor,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        decode: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Autoregressive K-step rollout with a sliding latent context: the base expert alone in
        :func:`nav_come.compose.rollout`, the loop every planner imagines with.

        context: (B or 1, C, ...) frames or latents; step_actions: (B, K, 3) one-step motions.
        Returns {"latents": (B, K, c, h, w), "frames": (B, K, 3, H, W) when ``decode``}.
        """
        from nav_come.compose import rollout

        ctx = self.context_latents(context, step_actions.shape[0])  # (B, C, c, h, w)
        latents = rollout(self.base_expert(), None, step_actions.to(self.device), steps or self.sampler_steps,
                          generator, self.sampler, context=ctx)  # fmt: skip
        result = {"latents": latents}
        if decode:
            result["frames"] = self.decode(result["latents"])
        return result

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write ``<dir>/ae`` and ``<dir>/base`` checkpoints (atomic per folder)."""
        directory = Path(directory)
        save_checkpoint(directory / AE_DIR, self.ae, "ae", metadata)
        schedule = dataclasses.asdict(self.schedule)
        save_checkpoint(directory / BASE_DIR, self.dit, "dit", {**(metadata or {}), "schedule": schedule})
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        device: str | torch.device = "cpu",
        sampler_steps: int = 5,
        sampler: str = "ddim",
        precision: str = "auto",
    ) -> WorldModel:
        """Load ``<dir>/ae`` and ``<dir>/base``; raises CheckpointError with the fix on any problem.
        precision: auto | fp32 | bf16 (:mod:`nav_come.core.precision`), resolved for ``device``."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(
                f"world model folder {directory} does not exist: it must hold '{AE_DIR}/' and '{BASE_DIR}/' "
                "checkpoints, as written by `python -m nav_come.train --out DIR`"
            )
        ae, _ = load_checkpoint(directory / AE_DIR, "ae", device)
        dit, meta = load_checkpoint(directory / BASE_DIR, "dit", device)
        try:
            schedule = CosineSchedule(**meta.get("schedule", {}))
            model = cls(ae, dit, schedule, sampler_steps, sampler, use_bf16(precision, device))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{directory}: the autoencoder and base expert do not fit together ({e})") from e
        return model.eval().requires_grad_(False)
