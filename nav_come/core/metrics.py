"""Evaluation metrics: pure functions, no I/O.

Trajectory metrics (docs/design.md §3) compare waypoint translations without alignment and
without scale correction; their unit is that of the input (spacing units in the
planning harness: multiply by ``metric_waypoint_spacing`` for metres).

Image metrics take batches (B, 3, H, W) of float images in [0, 1] and return one
value per image, shape (B,).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import torch.nn.functional as F

LPIPS_ENV = "NAV_COME_LPIPS_WEIGHTS"

# ----------------------------------------------------------------------------- trajectories


def _as_xy(name: str, x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim not in (2, 3) or x.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) or (B, N, 2) (pass waypoints[..., :2]), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _pair(est_xy, gt_xy) -> tuple[np.ndarray, np.ndarray]:
    est, gt = _as_xy("est_xy", est_xy), _as_xy("gt_xy", gt_xy)
    if est.shape != gt.shape:
        raise ValueError(f"est_xy and gt_xy must have the same shape, got {est.shape} and {gt.shape}")
    if est.shape[-2] == 0:
        raise ValueError("est_xy and gt_xy hold no waypoints")
    return est, gt


def _rmse(err: np.ndarray) -> float | np.ndarray:
    """err: (..., M, 2) error vectors -> sqrt(mean_M ||err||^2), float or (B,)."""
    out = np.sqrt((err**2).sum(-1).mean(-1))
    return float(out) if out.ndim == 0 else out


def ate(est_xy, gt_xy) -> float | np.ndarray:
    """Absolute trajectory error: ``sqrt(mean_k ||p̂_k - p_k||^2)``.

    est_xy, gt_xy: (N, 2) -> float, or (B, N, 2) -> (B,) array; NumPy or torch.
    Waypoint k of the estimate is compared with waypoint k of the ground truth, in
    the same frame (the robot frame at t), with no alignment and no scale correction.
    Equals evo's ``APE(PoseRelation.translation_part)`` RMSE with
    ``align=False, correct_scale=False``. Unit: that of the input.
    """
    est, gt = _pair(est_xy, gt_xy)
    return _rmse(est - gt)


def rpe(est_xy, gt_xy, delta: int = 1) -> float | np.ndarray:
    """Relative pose error, translation part:
    ``sqrt(mean_k ||(p̂_{k+δ} - p̂_k) - (p_{k+δ} - p_k)||^2)`` over the N-δ pairs
    (k, k+δ), k = 0..N-1-δ (consecutive pairs, not all pairs; the origin is not a waypoint).

    est_xy, gt_xy: (N, 2) -> float, or (B, N, 2) -> (B,) array; NumPy or torch.
    No alignment, no scale correction. Equals evo's ``RPE(translation_part, delta=δ,
    delta_unit=frames, all_pairs=False)`` RMSE when orientations are ignored
    (identity rotations): evo then reduces ``(Q_k^-1 Q_{k+δ})^-1 (P_k^-1 P_{k+δ})``
    to the translation difference above. With real yaws evo would rotate each relative
    translation into frame k first. Unit: that of the input.
    """
    if not isinstance(delta, (int, np.integer)) or delta < 1:
        raise ValueError(f"delta must be an integer >= 1 frame, got {delta!r}")
    est, gt = _pair(est_xy, gt_xy)
    if est.shape[-2] <= delta:
        raise ValueError(f"rpe needs more than delta={delta} waypoints, got {est.shape[-2]}")
    d_est = est[..., delta:, :] - est[..., :-delta, :]  # (..., N-δ, 2)
    d_gt = gt[..., delta:, :] - gt[..., :-delta, :]  # (..., N-δ, 2)
    return _rmse(d_est - d_gt)


# ----------------------------------------------------------------------------- images


def spearman(a, b) -> float:
    """Rank correlation of two (N,) arrays (ties broken by order; NaN when one is constant)."""
    a, b = np.asarray(a), np.asarray(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _check_images(pred: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError(f"pred and target must be torch tensors, got {type(pred).__name__}, {type(target).__name__}")
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"pred and target must share one shape (B, C, H, W), got {pred.shape} and {target.shape}")
    if not (torch.isfinite(pred).all() and torch.isfinite(target).all()):
        raise ValueError("pred or target contains NaN or inf")


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``, MSE over (C, H, W).

    pred, target: (B, C, H, W). Returns (B,) float32; +inf for identical images.
    """
    _check_images(pred, target)
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)  # (B,)
    return (10 * torch.log10(data_range**2 / mse)).float()


def _gaussian_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()  # (size,)


def ssim(
    pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), one value per image.

    Gaussian window ``win_size`` x ``win_size`` with ``sigma`` (11 and 1.5), K1=0.01,
    K2=0.03, population statistics, valid-region SSIM map averaged per channel and
    then over channels: the same as skimage ``structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)`` and pytorch-msssim's ``ssim``. For images smaller
    than the window, the window shrinks to the largest odd size that fits.
    Hand-written because torch-dependent metric packages would pull a CUDA torch.
    pred, target: (B, C, H, W) in [0, data_range]. Returns (B,).
    """
    _check_images(pred, target)
    B, C, H, W = pred.shape
    win = min(win_size, H, W)
    win -= 1 - win % 2  # odd
    dtype = pred.dtype if pred.dtype == torch.float64 else torch.float32
    x, y = pred.to(dtype), target.to(dtype)
    g = _gaussian_1d(win, sigma, dtype, pred.device)
    gh, gw = g.view(1, 1, win, 1).expand(C, 1, win, 1), g.view(1, 1, 1, win).expand(C, 1, 1, win)

    def blur(z: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H-win+1, W-win+1), valid
        return F.conv2d(F.conv2d(z, gh, groups=C), gw, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    return (luminance * contrast_structure).flatten(2).mean(2).mean(1)  # (B,)


# ----------------------------------------------------------------------------- LPIPS


class LPIPSUnavailable(RuntimeError):
    """LPIPS was asked for but no user-supplied LPIPS weights are available."""


def _weights_path(weights: str | os.PathLike | None) -> str | None:
    path = weights if weights is not None else os.environ.get(LPIPS_ENV)
    return os.fspath(path) if path else None


@functools.lru_cache(maxsize=4)
def _load_lpips(path: str) -> torch.jit.ScriptModule:
    return torch.jit.load(path, map_location="cpu").eval()


def _lpips_module(weights: str | os.PathLike | None) -> torch.jit.ScriptModule:
    path = _weights_path(weights)
    if path is None or not os.path.isfile(path):
        where = f"{path!r} is not a file" if path else "no weights were given"
        raise LPIPSUnavailable(
            f"LPIPS needs pretrained weights that cannot be downloaded here ({where}): pass weights=PATH or set "
            f"{LPIPS_ENV} to a TorchScript LPIPS module saved from the lpips package"
        )
    try:
        return _load_lpips(path)
    except Exception as e:  # a broken file means the same as no weights
        raise LPIPSUnavailable(f"cannot load LPIPS TorchScript module {path!r}: {e}") from e


def lpips_available(weights: str | os.PathLike | None = None) -> bool:
    """Whether :func:`lpips` can run: weights given (or in ``$NAV_COME_LPIPS_WEIGHTS``) and loadable."""
    try:
        _lpips_module(weights)
    except LPIPSUnavailable:
        return False
    return True


@torch.no_grad()
def lpips(pred: torch.Tensor, target: torch.Tensor, weights: str | os.PathLike | None = None) -> torch.Tensor:
    """LPIPS distance with a user-supplied network, one value per image. Lower is closer.

    pred, target: (B, 3, H, W) in [0, 1]. Returns (B,) float32.
    ``weights`` (or ``$NAV_COME_LPIPS_WEIGHTS``) is a TorchScript module taking two
    (B, 3, H, W) batches in [-1, 1] (the lpips package's convention) and returning
    (B,) or (B, 1, 1, 1). One way to make it, where the lpips package and its
    weights are available::

        m = lpips.LPIPS(net="alex").eval()
        x = torch.zeros(1, 3, 64, 64)
        torch.jit.save(torch.jit.trace(m, (x, x)), "lpips_alex.pt")

    Raises LPIPSUnavailable when no usable weights are given; no other network is
    ever substituted.
    """
    _check_images(pred, target)
    module = _lpips_module(weights)
    device = next(iter(module.parameters()), torch.empty(0)).device
    out = module(pred.float().to(device) * 2 - 1, target.float().to(device) * 2 - 1)
    if out.numel() != pred.shape[0]:
        raise ValueError(f"the LPIPS module returned shape {tuple(out.shape)}, expected one value per image")
    return out.reshape(-1).float().to(pred.device)


__all__ = ["LPIPSUnavailable", "ate", "lpips", "lpips_available", "psnr", "rpe", "ssim"]
