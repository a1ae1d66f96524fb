"""The metrics, as the README imports them: ``from eval.metrics import ate, rpe``.

They live in :mod:`nav_come.core.metrics` (the ground floor, so that planners and training read
them without importing ``eval``); see there for their conventions.
"""

from nav_come.core.metrics import LPIPS_ENV, LPIPSUnavailable, ate, lpips, lpips_available, psnr, rpe, ssim

__all__ = ["LPIPS_ENV", "LPIPSUnavailable", "ate", "lpips", "lpips_available", "psnr", "rpe", "ssim"]
