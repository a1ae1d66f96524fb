"""Tiny generated RECON-format data for tests.

Frames are rendered from the pose (a random smooth panorama scrolled by yaw, tinted by
position), so a revisit of the same pose shows the same view, as in real data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from nav_come.core.data import split_path, write_split, write_trajectory

STEP_M = 0.25  # metres per step: 1 m/s at 4 Hz
LOOP_PERIOD = 24  # steps per lap of a looping path


def smooth_path(T: int, seed: int = 0, loop: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A smooth path of T poses at STEP_M metres per step. Returns position (T, 2), yaw (T,).

    loop=False: a random walk with smoothly varying turn rate. loop=True: laps of a
    circle of LOOP_PERIOD steps, so frame k is at the exact pose of frame k - LOOP_PERIOD.
    """
    if loop:
        theta = 2 * math.pi * np.arange(T) / LOOP_PERIOD  # (T,)
        r = STEP_M / (2 * math.sin(math.pi / LOOP_PERIOD))  # chord of one step = STEP_M
        position = np.stack([r * np.sin(theta), r * (1 - np.cos(theta))], -1)
        return position, (theta + math.pi) % (2 * math.pi) - math.pi
    rng = np.random.default_rng(seed)
    rate = np.convolve(rng.normal(0.0, 0.15, T + 4), np.ones(5) / 5, mode="valid")[:T]  # (T,) rad/step
    yaw = np.cumsum(rate) - rate[0]
    heading = np.stack([np.cos(yaw), np.sin(yaw)], -1)[:-1]  # (T-1, 2)
    position = np.concatenate([np.zeros((1, 2)), np.cumsum(STEP_M * heading, 0)])
    return position, (yaw + math.pi) % (2 * math.pi) - math.pi


def render_frames(position: np.ndarray, yaw: np.ndarray, H: int = 64, W: int | None = None, seed: int = 0):
    """uint8 (T, H, W, 3) RGB views: a panorama window set by yaw, tinted by position."""
    W = W or H
    rng = np.random.default_rng(seed)
    pano_w = 4 * W
    pano = cv2.resize(rng.uniform(30, 200, (4, 12, 3)).astype(np.float32), (pano_w, H), interpolation=cv2.INTER_CUBIC)
    frames = []
    for (x, y), a in zip(position, yaw, strict=True):
        start = int(round((a % (2 * math.pi)) / (2 * math.pi) * pano_w))
        view = np.take(pano, np.arange(start, start + W) % pano_w, axis=1)  # (H, W, 3)
        tint = np.array([20 * math.sin(x), 20 * math.cos(y), 10 * math.sin(x + y)], np.float32)
        frames.append(np.clip(view + tint, 0, 255).astype(np.uint8))
    return np.stack(frames)


def make_fake_trajectory(
    folder, T: int, H: int = 64, seed: int = 0, loop: bool = False, W: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write a RECON trajectory folder; returns (frames (T,H,W,3) uint8, position (T,2), yaw (T,))."""
    position, yaw = smooth_path(T, seed, loop)
    frames = render_frames(position, yaw, H, W, seed)
    write_trajectory(folder, frames, position, yaw)
    return frames, position, yaw


def make_fake_dataset(
    data_dir,
    splits: dict[str, int] | None = None,
    T: int = 40,
    H: int = 32,
    seed: int = 0,
    loop: bool = False,
    spacing: float = STEP_M,
) -> dict[str, list[str]]:
    """A simulator-layout dataset: trajectories, ``splits/<split>/traj_names.txt`` and
    ``dataset.json``. splits: {split: number of trajectories}. Returns {split: names}."""
    data_dir = Path(data_dir)
    out, i = {}, 0
    for split, n in (splits or {"train": 2, "test": 1}).items():
        out[split] = []
        for _ in range(n):
            name = f"traj_{i:03d}"
            make_fake_trajectory(data_dir / name, T, H, seed + i, loop)
            out[split].append(name)
            i += 1
        write_split(split_path(data_dir, split), out[split])
    meta = {"name": "nav_come_sim", "metric_waypoint_spacing": spacing, "rate_hz": 4.0}
    (data_dir / "dataset.json").write_text(json.dumps(meta))
    return out


def add_tiny_policies(ckpt: str | Path, seed: int = 0) -> Path:
    """Untrained tiny GNM and NoMaD (32x32 frames) in ``ckpt/{gnm,nomad}``: the proposals that
    the default (seeded) search of a world-model method starts from."""
    import torch

    from planners.policy_common import builtin_policies

    torch.manual_seed(seed)
    for name, cls in builtin_policies().items():
        cls(cls.make_config("tiny")).save(Path(ckpt) / name)
    return Path(ckpt)
