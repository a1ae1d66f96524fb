"""The memory ablation (issue 5; docs/design.md §4, Table 1) behind ``python eval/predict.py --memory``.

Each sample of the split's ``memory_eval.json`` (``[{"traj", "t", "context", "horizon"}]``: a
frame t whose future t+1..t+horizon revisits places seen more than 32 frames before t) is
evaluated at every context length L:

1. the episode memory (:class:`~nav_come.memory_bank.EpisodeMemory`) holds the latents and
   world poses of the last L frames up to t (fewer where the trajectory has fewer);
2. the LTM memorises the part of it older than its ``exclude_recent`` (context + STM window),
   timed (``prepare_s``, seconds per sequence; ``ltm`` in the report: seconds per stored frame);
3. every method rolls the horizon out from the newest frames of the memory with the
   ground-truth one-step actions (:func:`nav_come.compose.rollout`), with the same noise for
   every method, seeded from ``seed`` and the sample's index (so the table does not depend on
   how many ``torchrun`` ranks share the samples: :mod:`eval.distributed`);
4. the predictions are decoded and scored against the true frames (PSNR, SSIM; LPIPS only
   with user weights, else null), averaged over the horizon; a row gives the mean and the
   standard error (std / sqrt(n), null for n = 1) over sequences;
5. the same scores split by target frame: a **revisit** target lies within 0.5 m and 30° of a
   frame of the memory older than its newest ``RECENT`` frames (the places seen more than 32
   frames before, that only a long memory holds); the others are **non-revisit** targets.
   ``revisit`` and ``non_revisit`` give the mean over sequences of each sequence's mean over
   such frames, and ``n``, the sequences that have any.

Rows (``ROWS``): "+X" is the base composed with expert X, "CoME" the base with the default
CoME experts (``planners.config.REGISTRY["come"]``), all contrastive with the given alphas
(base 1) and the relevance weights (``planners.config.relevance_weights``); "CoME (fixed α)"
the same without relevance weights, "CoME (no contrast)" the plain product.
Sliding (the STM network), "SLTM alone", SSM, Full and "CoME (student)" (CoME distilled into one
network, :mod:`planners.student`) are those networks alone. ``copy_nearest`` (naive
recall, docs/design.md §5) predicts the frame older than the context nearest each target pose (the
SLTM's retrieval rule; the newest context frame where none is near). A row whose expert
checkpoint is missing is skipped, with the reason.

Cost: ``s_per_frame`` is the wall time of a method's rollout and decoding divided by the
horizon (the LTM's memorisation is apart, in ``prepare_s``); ``peak_mb`` the largest, over
sequences, peak memory of that work above its start, as ``PeakMemory`` measures it (the
report's ``peak_memory`` says how). Under ``torchrun`` each rank times the sequences it scores,
on its own device, and the rows take the mean and max over every sequence of every rank.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nav_come.compose import ComposedDenoiser, rollout
from nav_come.core.data import DataFormatError, load_frames, one_step_actions, poses, read_trajectory, split_path
from nav_come.core.geometry import wrap_angle
from nav_come.core.io import atomic_write_bytes
from nav_come.experts import copy_nearest
from nav_come.memory_bank import EpisodeMemory
from planners.config import DEFAULT_RELEVANCE, REGISTRY, relevance_weights
from planners.methods import default_alphas, memory_experts

COME = ("base", *REGISTRY["come"].experts)  # the default CoME composition
ROWS: dict[str, tuple[tuple[str, ...], bool, bool]] = {  # row -> (experts, contrastive, relevance weights)
    "Base": (("base",), True, False),
    "+STM": (("base", "stm"), True, True),
    "+LTM": (("base", "ltm"), True, True),
    "+SLTM": (("base", "sltm"), True, True),
    "+STM+LTM": (("base", "stm", "ltm"), True, True),
    "+STM+LTM+SLTM": (("base", "stm", "ltm", "sltm"), True, True),
    "CoME": (COME, True, True),
    "CoME (fixed α)": (COME, True, False),
    "CoME (no contrast)": (COME, False, False),
    "Sliding": (("stm",), True, False),
    "SLTM alone": (("sltm",), True, False),
    "CoME (student)": (("student",), True, False),
    "SSM": (("ssm",), True, False),
    "Full": (("full",), True, False),
}
COPY_NEAREST = "copy_nearest"
EXPERTS = ("stm", "ltm", "sltm", "ssm", "full", "student")
RECENT = 32  # frames: a revisit target revisits a memory frame older than the newest RECENT
REVISIT_METRES, REVISIT_YAW = 0.5, np.radians(30)  # how near a revisited view is (as training's revisit_mask)
FIGURE_SEQS = 3  # sequences shown in the figure
Score = Callable[[torch.Tensor, torch.Tensor, bool], dict[str, torch.Tensor]]  # per-image metrics


class CopyNearest:
    """Naive recall as a denoiser: its x0 is the latent of the past frame nearest the target pose
    (:func:`nav_come.experts.copy_nearest`), so any sampler returns that frame and a rollout of it
    runs exactly the loop the experts run."""

    def __init__(self, context: int, schedule):
        self.context, self.schedule = context, schedule

    def condition(self, memory: EpisodeMemory, query) -> torch.Tensor:
        return copy_nearest(memory, query)  # (B, c, h, w)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.schedule.v_from_x0(x_t, cond.to(x_t), t)


class PeakMemory:
    """Peak memory of a block above its level at the start, in MiB (``mb``); ``how`` says what was read."""

    HOW = {
        "cuda": "torch.cuda.max_memory_allocated above the allocation at the start of the method (MiB)",
        "rss": "peak resident set size above the RSS at the start of the method (MiB): Linux VmHWM, reset through "
        "/proc/self/clear_refs after glibc's malloc_trim has returned freed memory, so reused memory counts",
        "ru_maxrss": "growth of getrusage's max RSS during the method (MiB; 0 unless it sets a new process peak)",
    }

    def __init__(self, device: torch.device):
        self.device, self.mb, self.how = device, 0.0, self.kind(device)

    @classmethod
    def kind(cls, device: torch.device) -> str:
        """What is read on ``device``: a key of ``HOW``."""
        return "cuda" if device.type == "cuda" else ("rss" if cls._reset_hwm() else "ru_maxrss")

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    @staticmethod
    @functools.cache
    def _libc():
        try:
            return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            return None

    @classmethod
    def _trim(cls) -> None:
        """Return freed heap memory to the OS, so the RSS at the start excludes what earlier work left."""
        libc = cls._libc()
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)

    @staticmethod
    def _status_kb(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise OSError(f"no {key} in /proc/self/status")

    def _read(self, peak: bool) -> float:
        if self.how == "cuda":
            return torch.cuda.max_memory_allocated(self.device) if peak else torch.cuda.memory_allocated(self.device)
        if self.how == "rss":
            return 1024.0 * self._status_kb("VmHWM" if peak else "VmRSS")
        return 1024.0 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux

    def __enter__(self) -> PeakMemory:
        if self.how == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.how == "rss":
            self._trim()
            self._reset_hwm()
        self.start = self._read(peak=False)
        return self

    def __exit__(self, *exc) -> None:
        self.mb = max(0.0, self._read(peak=True) - self.start) / 2**20


def load_samples(data: Path, split_dir, dataset, n: int | None, split: str = "test") -> list[dict]:
    """The split's memory_eval samples: the first ``n`` after a fixed shuffle, in file order."""
    path = split_path(data, split, split_dir, dataset).parent / "memory_eval.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the memory table reads the {split} split's memory_eval.json "
                                "([{traj, t, context, horizon}], written by envs/collect.py)")  # fmt: skip
    samples = json.loads(path.read_text())
    if not samples or not all(isinstance(s, dict) and {"traj", "t", "horizon"} <= s.keys() for s in samples):
        raise DataFormatError(f"{path}: needs a non-empty list of {{traj, t, context, horizon}} objects")
    keep = np.sort(np.random.default_rng(0).permutation(len(samples))[:n])
    return [samples[i] for i in keep]


def _composition(world_model, experts: dict, names, alphas: dict, weights: dict | None, contrastive: bool,
                 normalise: bool) -> ComposedDenoiser:  # fmt: skip
    """The experts ``names`` composed on the world model's schedule and precision."""
    return ComposedDenoiser({n: experts[n] for n in names}, alphas, weights or None, contrastive, normalise,
                            schedule=world_model.schedule, bf16=world_model.bf16)  # fmt: skip


def denoisers(
    world_model, experts: dict, alphas: dict, normalise: bool, missing: dict, rows=None, relevance=None
) -> tuple[dict, dict]:
    """{row: denoiser} for the rows (default: all, ``ROWS`` and copy_nearest) whose experts are all
    there, and {row: reason} for the others. relevance: {expert: weight at full relevance}
    (``planners.config.relevance_weights``; None: the defaults)."""
    out, skipped = {}, {}
    weights = relevance_weights(relevance)
    for row, (names, contrastive, relevant) in ROWS.items():
        if rows is not None and row not in rows:
            continue
        lacking = [n for n in names if n not in experts]
        if lacking:
            skipped[row] = missing.get(lacking[0], f"needs the {lacking[0]} expert")
            continue
        alone = len(names) == 1  # the expert itself (alpha 1)
        coefficients = {n: 1.0 if alone else alphas.get(n, 1.0) for n in names}
        shares = {n: w for n, w in weights.items() if n in names} if relevant and not alone else None
        out[row] = _composition(world_model, experts, names, coefficients, shares, contrastive, normalise and not alone)
    if rows is None or COPY_NEAREST in rows:
        out[COPY_NEAREST] = CopyNearest(world_model.context, world_model.schedule)
    return out, skipped


def variant_rows(world_model, experts: dict, alphas: dict, normalise: bool, variants: list[dict]) -> dict:
    """{"CoME [sltm=W ltm=W]": denoiser}: CoME with each set of relevance weights in ``variants``
    (to choose them on validation worlds from one memorisation per sequence)."""
    out = {}
    for given in variants:
        relevance = {**DEFAULT_RELEVANCE, **given}
        label = "CoME [" + " ".join(f"{k}={v:g}" for k, v in relevance.items()) + "]"
        weights = {n: w for n, w in relevance_weights(relevance).items() if n in COME}
        out[label] = _composition(world_model, experts, COME, {n: alphas.get(n, 1.0) for n in COME}, weights, True,
                                  normalise)  # fmt: skip
    return out


def load_sequence(world_model, data: Path, sample: dict, spacing: float, longest: int) -> dict:
    """One sample: latents (T, c, h, w) and world poses (T, 3) of up to ``longest`` frames up to t,
    the true future frames (K, 3, H, W), its one-step actions (K, 3) and the memory's frames."""
    t, K, folder = int(sample["t"]), int(sample["horizon"]), data / sample["traj"]
    tr = read_trajectory(folder, load_images=False)
    if t < 0 or K < 1 or t + K >= len(tr.yaw):
        raise DataFormatError(f"memory_eval sample {sample} does not fit {folder} ({len(tr.yaw)} frames)")
    lo = t + 1 - min(longest, int(sample.get("context", t + 1)), t + 1)
    x = torch.from_numpy(load_frames(folder, range(lo, t + K + 1), world_model.ae.config.image_size))
    x = x.float().div(255).movedim(-1, -3)  # (T+K, 3, H, W)
    return {
        "latents": world_model.encode(x[None, : t + 1 - lo])[0],  # (T, c, h, w), encoded once for every L
        "poses": poses(tr.position, tr.yaw)[lo : t + 1],
        "actions": torch.from_numpy(one_step_actions(tr.position, tr.yaw, spacing)[t : t + K]).float(),
        "future_poses": poses(tr.position, tr.yaw)[t + 1 : t + K + 1],
        "truth": x[t + 1 - lo :],
        "frames": x[: t + 1 - lo],
        "label": f"{sample['traj']} t={t}",
    }


def revisit_targets(memory_poses, targets) -> np.ndarray:
    """Which target world poses (K, 3) revisit a memory frame (poses (T, 3), oldest first) older
    than the newest ``RECENT``: within REVISIT_METRES and REVISIT_YAW. bool (K,)."""
    old = np.asarray(memory_poses, np.float64)[: max(0, len(memory_poses) - RECENT)]  # (J, 3)
    targets = np.asarray(targets, np.float64)
    if not len(old):
        return np.zeros(len(targets), bool)
    d = np.hypot(targets[:, None, 0] - old[None, :, 0], targets[:, None, 1] - old[None, :, 1])  # (K, J)
    dyaw = np.abs(wrap_angle(targets[:, None, 2] - old[None, :, 2]))
    return ((d <= REVISIT_METRES) & (dyaw <= REVISIT_YAW)).any(1)


def _predict(world_model, method, memory: EpisodeMemory, actions: torch.Tensor, steps: int, seed: int) -> dict:
    """One method's decoded rollout (K, 3, H, W), its seconds and peak memory."""
    gen = torch.Generator().manual_seed(seed)
    steps = 1 if isinstance(method, CopyNearest) else steps  # its x0 is exact at any step
    with PeakMemory(world_model.device) as peak:
        start = time.perf_counter()
        z = rollout(method, memory, actions[None].to(world_model.device), steps, gen, world_model.sampler)[0]
        frames = world_model.decode(z).cpu()
        seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": seconds, "peak_mb": peak.mb}


def _summary(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error over sequences (None for one sequence)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), (float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None)


def _score_memory(world_model, denoisers: dict, memory: EpisodeMemory, seq: dict, seed: int, steps: int, score: Score,
                  with_lpips: bool, prepare_s: float) -> tuple[dict, dict]:  # fmt: skip
    """Every row's prediction from one memory: its scores {row: {metric: value}} and frames {row: (K, 3, H, W)};
    ``revisit_psnr`` etc. average the revisit targets only (None: there are none), ``new_psnr`` the others."""
    scores, preds, K = {}, {}, len(seq["truth"])
    revisit = torch.from_numpy(revisit_targets(memory.poses[: memory.now + 1].numpy(), seq["future_poses"]))
    for name, method in denoisers.items():
        out = _predict(world_model, method, memory, seq["actions"], steps, seed)
        per_frame = score(out["frames"], seq["truth"], with_lpips)
        s = {k: float(v.mean()) for k, v in per_frame.items()}  # over the horizon
        for prefix, keep in (("revisit_", revisit), ("new_", ~revisit)):
            for k in ("psnr", "ssim"):
                s[prefix + k] = float(per_frame[k][keep].mean()) if keep.any() else None
        uses_ltm = isinstance(method, ComposedDenoiser) and "ltm" in method.experts
        s |= {"s_per_frame": out["seconds"] / K, "peak_mb": out["peak_mb"], "frames": len(memory),
              "prepare_s": prepare_s if uses_ltm else 0.0}  # fmt: skip
        scores[name], preds[name] = s, out["frames"]
    return scores, preds


def save_record(path: Path, record: dict) -> None:
    """One sequence's record of :func:`evaluate` (numbers, names and CPU tensors), written atomically."""
    buf = io.BytesIO()
    torch.save(record, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_record(path: Path) -> dict:
    """A record kept by :func:`save_record`; ValueError naming the file when it cannot be read."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # a torn or foreign file: the message says how to redo it
        raise ValueError(f"kept result {path} cannot be read ({type(err).__name__}); delete it to redo that "
                         "sequence") from err  # fmt: skip


def evaluate(world_model, denoisers: dict, ltm, sequences, contexts: list[int], spacing: float, seed: int, steps: int,
             score: Score, with_lpips: bool = False, bar=None,
             keep: Path | None = None) -> list[tuple[int, dict]]:  # fmt: skip
    """Score every row at every context length; see the module docstring.

    denoisers: {row name: denoiser} (:func:`denoisers`); ltm: the LTM expert that memorises each memory
    (None: no row uses it); sequences: an iterable of ``(i, load_sequence dict)``, i the sample's index
    in the full list (its noise is seeded from (seed, i), whichever sequences come before it). Returns
    per sequence ``(i, {L: {"scores": {row: {metric: value}}, "memorised": (seconds, frames) or None,
    "shown": figure entry or None}})``, for :func:`summarise`. keep: a folder where each sequence's
    record is saved as ``<i>.pt`` when it is done (``--resume``).
    """
    out = []
    for n, (i, seq) in enumerate(sequences):
        record = {}
        for L in contexts:
            T = min(L, len(seq["latents"]))
            memory = EpisodeMemory(seq["latents"][-T:], seq["poses"][-T:], spacing)
            report = ltm.memorize(memory) if ltm is not None else None
            prepare_s = report.seconds if report is not None else 0.0
            if n == 0 and L == contexts[0]:  # warm-up on this rank's first sequence, untimed: one-off allocations
                warm = EpisodeMemory(memory.latents, memory.poses, spacing)  # apart: the SSM caches per memory
                for method in denoisers.values():
                    _predict(world_model, method, warm, seq["actions"][:1], steps, 0)
            scores, preds = _score_memory(world_model, denoisers, memory, seq, seed * 1_000_003 + i, steps, score,
                                          with_lpips, prepare_s)  # fmt: skip
            shown = None
            if i < FIGURE_SEQS and L == contexts[-1]:
                strip = np.linspace(len(seq["frames"]) - T, len(seq["frames"]) - 1, len(seq["truth"])).round()
                shown = {"label": seq["label"], "context": T, "strip": seq["frames"][strip.astype(int)].half(),
                         "truth": seq["truth"].half(), "preds": {k: v.half() for k, v in preds.items()}}  # fmt: skip
            memorised = (report.seconds, report.frames) if report is not None and report.frames else None
            record[L] = {"scores": scores, "memorised": memorised, "shown": shown}
            if bar is not None:
                bar.update()
        if keep is not None:
            save_record(keep / f"{i}.pt", record)
        out.append((i, record))
    return out


def summarise(records: list[dict], contexts: list[int], names: list[str], device: torch.device) -> dict:
    """The table from :func:`evaluate`'s records of every sequence, in order: {"rows", "ltm":
    [{context, s_per_stored_frame, frames}], "peak_memory", "shown"}. Means and standard errors are
    over all sequences, whichever rank scored them; so are the timings, each measured by its rank.
    Each row keeps its PSNR per sequence (``psnr_per_seq``, in the records' order) for paired
    differences between rows."""
    keys = ("psnr", "ssim", "lpips", "s_per_frame", "peak_mb", "frames", "prepare_s")
    split = ("revisit_psnr", "revisit_ssim", "new_psnr", "new_ssim")
    rows = []
    for L in contexts:
        for name in names:
            a = {k: [] for k in (*keys, *split)}
            for record in records:
                for k, v in record[L]["scores"][name].items():
                    if v is not None or k not in split:
                        a[k].append(v)
            psnr, psnr_se = _summary(a["psnr"])
            ssim, ssim_se = _summary(a["ssim"])
            rows.append({"method": name, "psnr": psnr, "psnr_se": psnr_se, "ssim": ssim, "ssim_se": ssim_se,
                         "lpips": _summary(a["lpips"])[0] if a["lpips"] else None,
                         "s_per_frame": float(np.mean(a["s_per_frame"])), "peak_mb": float(max(a["peak_mb"])),
                         "n": len(a["psnr"]), "context": L, "context_frames": float(np.mean(a["frames"])),
                         "prepare_s": float(np.mean(a["prepare_s"])), "psnr_per_seq": a["psnr"]})  # fmt: skip
            for part, prefix in (("revisit", "revisit_"), ("non_revisit", "new_")):
                values = a[prefix + "psnr"]
                rows[-1][part] = {"psnr": _summary(values)[0] if values else None,
                                  "psnr_se": _summary(values)[1] if values else None,
                                  "ssim": _summary(a[prefix + "ssim"])[0] if values else None,
                                  "n": len(values)}  # fmt: skip
    ltm_rows = []
    for L in contexts:
        m = [r[L]["memorised"] for r in records if r[L]["memorised"] is not None]  # (seconds, frames) per sequence
        if m:
            ltm_rows.append({"context": L, "s_per_stored_frame": sum(s for s, _ in m) / sum(f for _, f in m),
                             "frames": float(np.mean([f for _, f in m]))})  # fmt: skip
    shown = [r[L]["shown"] for r in records for L in contexts if r[L]["shown"] is not None]
    return {"rows": rows, "ltm": ltm_rows, "peak_memory": PeakMemory.HOW[PeakMemory.kind(device)], "shown": shown}


def build(world_model, ckpt: Path, alphas: dict, normalise: bool, device, rows=None,
          relevance: dict | None = None, variants: list[dict] = ()) -> tuple[dict, dict, object]:  # fmt: skip
    """{row name: denoiser}, the skipped rows {name: reason} and the LTM expert (None if no row uses it).
    ``rows``: the row names to build (default all); an unknown name raises ValueError; relevance:
    {expert: weight at full relevance} (None: the defaults); variants: more relevance weights for
    extra CoME rows (:func:`variant_rows`)."""
    unknown = sorted(set(rows or ()) - {*ROWS, COPY_NEAREST})
    if unknown:
        raise ValueError(f"unknown --rows {unknown}; choose from {[*ROWS, COPY_NEAREST]}")
    missing: dict[str, str] = {}
    experts = memory_experts(ckpt, EXPERTS, world_model, device, missing)  # all: the LTM's settings depend on the STM
    weights = {**default_alphas(world_model.sampler_steps), **alphas}
    rows, skipped = denoisers(world_model, experts, weights, normalise, missing, rows, relevance)
    if variants:
        lacking = [n for n in COME if n not in experts]
        if lacking:
            raise ValueError(f"relevance variants of CoME need the {lacking[0]} expert: {missing.get(lacking[0])}")
        rows |= variant_rows(world_model, experts, weights, normalise, variants)
    uses_ltm = any(isinstance(m, ComposedDenoiser) and "ltm" in m.experts for m in rows.values())
    return rows, skipped, experts["ltm"] if uses_ltm else None


def _pm(mean: float, se: float | None, digits: int) -> str:
    return f"{mean:.{digits}f} ± " + (f"{se:.{digits}f}" if se is not None else "-")


def format_table(rows: list[dict]) -> str:
    lines = [f"{'method':<22}{'L':>5}{'PSNR':>16}{'SSIM':>16}{'revisit':>9}{'other':>7}{'LPIPS':>7}{'s/frame':>9}"
             f"{'peak MB':>9}{'n':>4}"]  # fmt: skip
    for r in rows:
        lp = f"{r['lpips']:.3f}" if r["lpips"] is not None else "-"
        parts = [r.get(k, {}).get("psnr") for k in ("revisit", "non_revisit")]
        revisit, other = (f"{v:.2f}" if v is not None else "-" for v in parts)
        lines.append(f"{r['method']:<22}{r['context']:>5}{_pm(r['psnr'], r['psnr_se'], 2):>16}"
                     f"{_pm(r['ssim'], r['ssim_se'], 3):>16}{revisit:>9}{other:>7}{lp:>7}{r['s_per_frame']:>9.3f}"
                     f"{r['peak_mb']:>9.1f}{r['n']:>4}")  # fmt: skip
    return "\n".join(lines)
