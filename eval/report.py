"""The tables of the docs, regenerated from the result JSONs kept under ``results/``.

    python -m eval.report            # rewrite every generated table in docs/*.md
    python -m eval.report --check    # exit 1 if a table in the docs differs from its JSONs

A generated table sits between ``<!-- report:NAME -->`` and ``<!-- /report -->`` in a doc;
:data:`TABLES` says how each is made from ``results/``. A reader can check a number against
the JSON it came from without rerunning anything.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nav_come.core.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- report:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /report -->)", re.S)


PATHS = (("native", "AVX-512-BF16"), ("avx2", "AVX2"))  # the CPU paths of results/precision: file tag, label
EMULATION = {"native": "native bf16", "avx2": "bf16 emulated"}


def _load(results: Path, name: str) -> dict:
    return json.loads((results / name).read_text())


def precision_plan(results: Path) -> str:
    """``plan.py`` on the example at each precision, on the native-bf16 path and the AVX2 path: the
    median of the repeated runs (``plan_PATH_PRECISION_rN.json``), the runs interleaved."""
    lines = ["| CPU path | auto picks | s/plan auto | s/plan fp32 | s/plan bf16 | auto / faster | runs |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for path, label in PATHS:
        runs = {p: [_load(results, f.relative_to(results).as_posix())
                    for f in sorted((results / "precision").glob(f"plan_{path}_{p}_r*.json"))]
                for p in ("auto", "fp32", "bf16")}  # fmt: skip
        sec = {p: statistics.median(r["seconds"] for r in rs) for p, rs in runs.items()}
        picks = {r["precision"] for r in runs["auto"]}
        lines.append(f"| {label} ({EMULATION[path]}) | {', '.join(sorted(picks))} | {sec['auto']:.1f} | "
                     f"{sec['fp32']:.1f} | "
                     f"{sec['bf16']:.1f} | {sec['auto'] / min(sec['fp32'], sec['bf16']):.2f} | "
                     f"{len(runs['auto'])} |")  # fmt: skip
    return "\n".join(lines)


def precision_inprocess(results: Path) -> str:
    """``eval.bench precision``: one NWM plan per precision, interleaved in one process."""
    lines = ["| CPU path | precision | runs as | s/plan (median) | runs (s) | / fastest forced |",
             "|---|---|---|---|---|---|"]
    for path, label in PATHS:
        rows = _load(results, f"precision/inprocess_{path}.json")["rows"]
        fastest = min(r["s_per_plan"] for r in rows if r["precision"] != "auto")
        for r in rows:
            runs = ", ".join(f"{s:.1f}" for s in r["seconds"])
            lines.append(f"| {label} | {r['precision']} | {r['runs_as']} | {r['s_per_plan']:.2f} | {runs} | "
                         f"{r['s_per_plan'] / fastest:.2f} |")  # fmt: skip
    return "\n".join(lines)


def precision_model(results: Path) -> str:
    """``eval.bench model``: a training step and one-step predictions, fp32 and bf16 side by side."""
    lines = ["| CPU path | precision | train s/step (batch 32) | predict frames/s (batch 120, 5 DDIM steps) |",
             "|---|---|---|---|"]  # fmt: skip
    for path, label in PATHS:
        report = _load(results, f"precision/bench_model_{path}.json")
        for r in report["rows"]:
            pick = " (auto)" if r["precision"] == report["auto_precision"] else ""
            lines.append(f"| {label} | {r['precision']}{pick} | {r['train_s_per_step']:.3f} | "
                         f"{r['predict_frames_per_s']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def precision_bench_plan(results: Path) -> str:
    """``eval.bench plan --quick``: seconds per plan of each CEM method at each precision."""
    lines = ["| CPU path | method | sampler | steps | s/plan fp32 | s/plan bf16 | bf16 / fp32 |",
             "|---|---|---|---|---|---|---|"]
    for path, label in PATHS:
        rows = _load(results, f"precision/bench_plan_{path}.json")["rows"]
        cells = {(r["method"], r["sampler"], r["sampler_steps"], r["precision"]): r["s_per_plan"] for r in rows}
        for m, sampler, steps in dict.fromkeys((r["method"], r["sampler"], r["sampler_steps"]) for r in rows):
            fp32, bf16 = cells[m, sampler, steps, "fp32"], cells[m, sampler, steps, "bf16"]
            lines.append(f"| {label} | {m} | {sampler} | {steps} | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f} |")
    return "\n".join(lines)


def bench_seeded(results: Path, name: str = "precision/bench_plan_seeded_native.json") -> str:
    """``eval.bench plan --search seeded``: seconds per plan of each method at each rollout count."""
    lines = ["| method | rollouts | precision | s/plan | × NWM | forwards/plan (one per branch) | largest batch |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in _load(results, name)["rows"]:
        lines.append(f"| {r['method']} | {r['rollouts']} | {r['precision']} | {r['s_per_plan']:.2f} | "
                     f"{r['vs_nwm']:.2f} | {r['forwards_per_plan']} ({r['forwards_unbatched']}) | {r['batch']} |")
    return "\n".join(lines)


def bench_int8(results: Path, name: str = "precision/bench_plan_int8_avx2.json") -> str:
    """``eval.bench plan --precision fp32 int8``: seconds per plan at both precisions and int8's speed-up."""
    rows = _load(results, name)["rows"]
    seconds = {(r["method"], r["rollouts"], r["precision"]): r["s_per_plan"] for r in rows}
    lines = ["| method | rollouts | s/plan fp32 | s/plan int8 | fp32 / int8 |", "|---|---|---|---|---|"]
    for (m, k, p), fp32 in seconds.items():
        if p == "fp32" and (m, k, "int8") in seconds:
            int8 = seconds[m, k, "int8"]
            lines.append(f"| {m} | {k} | {fp32:.2f} | {int8:.2f} | {fp32 / int8:.2f} |")
    return "\n".join(lines)


INT8_VAL = ("planning_val/fp32_avx2", "planning_val/int8_avx2")  # eval/ate_rpe.py --resume folders, AVX2 path


def int8_val(results: Path) -> str:
    """Planning ATE on validation worlds at fp32 and int8 (the AVX2 path), and int8 − fp32 paired per sample."""
    from eval.paired import paired, records

    lines = ["| method | ATE fp32 | ATE int8 | int8 − fp32 (paired) | RPE int8 − fp32 | s/plan fp32 | s/plan int8 | "
             "samples |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    runs = [_load(results, f"planning_val/val40_{p}_avx2.json")["rows"] for p in ("fp32", "int8")]
    for fp32, int8 in zip(*runs, strict=True):
        m = fp32["method"]
        d = paired(records(results / INT8_VAL[1] / m), records(results / INT8_VAL[0] / m))
        lines.append(f"| {m} | {fp32['ate']:.3f} | {int8['ate']:.3f} | {d['ate']:+.3f} ± {d['ate_se']:.3f} | "
                     f"{d['rpe']:+.3f} ± {d['rpe_se']:.3f} | {fp32['s_per_plan']:.1f} | {int8['s_per_plan']:.1f} | "
                     f"{d['n']} |")  # fmt: skip
    return "\n".join(lines)


SEEDED_VAL = (("val40_paper.json", None),
              ("val40_seeded.json", "seeded: 16 NoMaD + 8 GNM + 32 prior draws, 2 iterations"),
              ("val40_seeded_it1.json", "seeded: the same, 1 iteration (ranks the first population)"),
              ("val40_seeded_noprior.json", "seeded: 16 NoMaD + 8 GNM, 2 iterations (chosen)"),
              ("val40_come_seeded.json", "seeded: the chosen settings"),
              ("val40_come_r1.json", "seeded: the chosen settings, 1 rollout per candidate"))  # fmt: skip


def seeded_val(results: Path) -> str:
    """The proposal-seeded search against the paper protocol and the policies on validation worlds."""
    lines = ["| method | search | ATE | RPE | ATE (m) | s/plan | n |", "|---|---|---|---|---|---|---|"]
    for name, search in SEEDED_VAL:
        for r in _load(results, f"planning_val/{name}")["rows"]:
            how = search or ("paper protocol" if r["method"] in ("NWM", "CoME") else "-")
            lines.append(f"| {r['method']} | {how} | {r['ate']:.3f} | {r['rpe']:.3f} | {r['ate_m']:.3f} | "
                         f"{r['s_per_plan']:.1f} | {r['n']} |")  # fmt: skip
    return "\n".join(lines)


STUDENT_VAL = (("val40_come_seeded.json", None, 3), ("val40_come_r1.json", "come_r1/CoME", 1),
               ("val40_come_student.json", "come_student/CoME (student)", 3),
               ("val40_come_student_r1.json", "come_student_r1/CoME (student)", 1))  # fmt: skip


def student_val(results: Path) -> str:
    """CoME composed and its one-network student on validation worlds, at 3 and 1 rollouts."""
    lines = ["| method | rollouts | ATE | RPE | ATE (m) | s/plan | n |", "|---|---|---|---|---|---|---|"]
    for name, _, rollouts in STUDENT_VAL:
        for r in _load(results, f"planning_val/{name}")["rows"]:
            lines.append(f"| {r['method']} | {rollouts} | {r['ate']:.3f} | {r['rpe']:.3f} | {r['ate_m']:.3f} | "
                         f"{r['s_per_plan']:.1f} | {r['n']} |")  # fmt: skip
    return "\n".join(lines)


def student_val_paired(results: Path) -> str:
    """Paired ATE differences on the 40 validation samples: the student and CoME against seeded NWM
    (its per-sample plans are ``eval/perfect.py``'s imagined row) and against each other."""
    from eval.paired import records

    nwm = dict(enumerate(next(r for r in _load(results, "perfect/val40.json")["rows"]
                              if r["key"] == "imagined")["per_sample_ate"]))  # fmt: skip
    runs = {f"{folder.split('/')[1]}, {k} rollout{'s' * (k > 1)}": {i: e[:, 0].mean() for i, e in
            records(results / "planning_val" / folder).items()} for _, folder, k in STUDENT_VAL if folder}  # fmt: skip
    pairs = [(a, "NWM") for a in runs] + [("CoME (student), 1 rollout", "CoME, 1 rollout")]
    lines = ["| difference | ATE | samples |", "|---|---|---|"]
    for a, b in pairs:
        ours, theirs = runs[a], runs[b] if b in runs else nwm
        d = np.array([ours[i] - theirs[i] for i in sorted(ours.keys() & theirs.keys())])
        lines.append(f"| {a} − {b} | {d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f} | {len(d)} |")
    return "\n".join(lines)


def ate_table(results: Path, name: str) -> str:
    """An ``eval/ate_rpe.py`` JSON's rows with their search (mean ± std over seeds)."""
    lines = ["| method | search | ATE | RPE | ATE (m) | RPE (m) | samples × seeds | s/plan | in wall |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    report = _load(results, name)
    seeds, search = len(report["protocol"]["seeds"]), report["protocol"].get("search", "paper")
    for r in report["rows"]:
        if r["method"] in ("GNM", "NoMaD"):
            how = "-"
        elif r["method"] == "NWM (paper protocol)" or search == "paper":
            how = "paper protocol"
        else:
            how = "seeded (chosen on validation)"
        lines.append(f"| {r['method']} | {how} | {r['ate']:.3f} ± {r['ate_std']:.3f} | {r['rpe']:.3f} ± "
                     f"{r['rpe_std']:.3f} | {r['ate_m']:.3f} | {r['rpe_m']:.3f} | {r['n']} × {seeds} | "
                     f"{r['s_per_plan']:.1f} | {r.get('plan_collision', float('nan')):.2f} |")  # fmt: skip
    return "\n".join(lines)


def prediction(results: Path, name: str) -> str:
    """An ``eval/predict.py`` JSON: PSNR and SSIM per horizon of each row."""
    rows = _load(results, name)["rows"]
    horizons = sorted({r["horizon"] for r in rows})
    labels = {"world_model": "world model", "copy_last": "copy last frame",
              "ae_recon": "autoencoder reconstruction (ceiling)"}  # fmt: skip
    head = [f"PSNR@{h}" for h in horizons] + [f"SSIM@{h}" for h in horizons]
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        lines.append(_prediction_line(labels.get(method, method), [r for r in rows if r["method"] == method], horizons))
    return "\n".join(lines)


def _prediction_line(label: str, rows: list[dict], horizons: list[int]) -> str:
    """One table line: PSNR then SSIM at each horizon of one predictor's rows."""
    by_h = {r["horizon"]: r for r in rows}
    cells = [f"{by_h[h]['psnr']:.2f}" for h in horizons] + [f"{by_h[h]['ssim']:.3f}" for h in horizons]
    return f"| {label} | " + " | ".join(cells) + " |"


def prediction_compare(results: Path, names: dict[str, str]) -> str:
    """Several ``eval/predict.py`` JSONs on the same windows: the world model's PSNR and SSIM per horizon,
    one row per JSON ({label: file}), and copy-last-frame once."""
    reports = {label: _load(results, name)["rows"] for label, name in names.items()}
    first = next(iter(reports.values()))
    horizons = sorted({r["horizon"] for r in first})
    head = [f"PSNR@{h}" for h in horizons] + [f"SSIM@{h}" for h in horizons]
    lines = ["| predictor | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    rows = [(label, [r for r in rows if r["method"] == "world_model"]) for label, rows in reports.items()]
    rows.append(("copy last frame", [r for r in first if r["method"] == "copy_last"]))
    lines += [_prediction_line(label, picked, horizons) for label, picked in rows]
    return "\n".join(lines)


def seeded_test(results: Path) -> str:
    """The chosen seeded search on the maze test split beside the policies."""
    return ate_table(results, "planning_test/test100_seeded.json")


def paired_ate(results: Path, folder: str, pairs: list[tuple[str, str]]) -> str:
    """Paired ATE and RPE differences between methods' per-sample results kept in ``results/folder/<method>``
    (``eval/ate_rpe.py --resume``), mean over seeds ± one standard error."""
    from eval.paired import paired, records

    lines = ["| difference | ATE | RPE | samples |", "|---|---|---|---|"]
    for a, b in pairs:
        lines.append(_paired_line(a, b, paired(records(results / folder / a), records(results / folder / b))))
    return "\n".join(lines)


def _paired_line(a: str, b: str, d: dict) -> str:
    """One line of a paired table: A − B in ATE and RPE, ± one standard error, and the sample count."""
    return f"| {a} − {b} | {d['ate']:+.3f} ± {d['ate_se']:.3f} | {d['rpe']:+.3f} ± {d['rpe_se']:.3f} | {d['n']} |"


def paired_kept(results: Path, a: tuple[str, list[str]], others: list[tuple[str, list[str]]]) -> str:
    """Paired ATE and RPE differences of method A against each other method, each given as (label,
    its ``eval/ate_rpe.py --resume`` method folders under ``results``, one per seed run): each
    sample's error averaged over its seeds, mean ± one standard error over the samples."""
    return paired_kept_pairs(results, [(a, b) for b in others])


def paired_kept_pairs(results: Path, pairs: list[tuple[tuple[str, list[str]], tuple[str, list[str]]]]) -> str:
    """:func:`paired_kept` for any pairs ((label A, folders of A), (label B, folders of B))."""
    from eval.paired import merged, paired

    kept: dict[tuple[str, ...], dict] = {}  # folders -> merged records: each read once

    def load(folders: list[str]) -> dict:
        if tuple(folders) not in kept:
            kept[tuple(folders)] = merged([results / f for f in folders])
        return kept[tuple(folders)]

    lines = ["| difference | ATE | RPE | samples |", "|---|---|---|---|"]
    for (a, a_folders), (b, b_folders) in pairs:
        lines.append(_paired_line(a, b, paired(load(a_folders), load(b_folders))))
    return "\n".join(lines)


def student_test_paired(results: Path, folder: str = "planning_test/come_student", seeds: list[str] | None = None,
                        others: tuple[str, ...] = ("CoME", "NWM", "GNM")) -> str:  # fmt: skip
    """The CoME student's 3 test seeds (one run, ``folder``) paired with the composed CoME, NWM and GNM
    of ``seeds`` (default ``COME_SEEDS``: three runs, one seed each), each sample's error averaged over
    its seeds."""
    student = ("CoME (student)", [f"{folder}/CoME (student)"])
    return paired_kept(results, student, [(o, [f"{f}/{o}" for f in seeds or COME_SEEDS]) for o in others])


def table_timing(results: Path, name: str) -> str:
    """An ``eval/ate_rpe.py`` JSON of one timed run: each method's ATE, its seconds per plan and per
    observed episode, its share of the summed plan time, and the run's wall time."""
    report = _load(results, name)
    cost = {r["method"]: r["n"] * (r["s_per_plan"] + r.get("s_per_observe", 0.0)) for r in report["rows"]}
    lines = ["| method | ATE | RPE | s/plan | s/observe | share of the time |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['method']} | {r['ate']:.3f} | {r['rpe']:.3f} | {r['s_per_plan']:.1f} | "
                     f"{r.get('s_per_observe', 0.0):.1f} | {cost[r['method']] / sum(cost.values()):.0%} |")  # fmt: skip
    seeds = len(report["protocol"]["seeds"])
    lines.append(f"\nWall time: **{report['wall_s'] / 60:.1f} min** for {report['rows'][0]['n']} samples × {seeds} "
                 f"seed{'s' * (seeds > 1)}, {len(report['rows'])} methods.")  # fmt: skip
    return "\n".join(lines)


PERFECT_PAIRS = [("true", "imagined"), ("true", "gnm"), ("imagined", "gnm"), ("true", "oracle")]
PERFECT_SHORT = {"imagined": "imagined views", "true": "true views", "gnm": "GNM", "oracle": "oracle"}


def seeds_table(results: Path, folders: list[str], methods: list[str]) -> str:
    """Methods' ATE and RPE over several ``eval/ate_rpe.py --resume`` folders, one seed each: every
    seed's mean over the samples all folders hold, then the mean ± std over the seeds."""
    return seeds_rows(results, [(m, [f"{f}/{m}" for f in folders]) for m in methods])


def seeds_rows(results: Path, rows: list[tuple[str, list[str]]]) -> str:
    """:func:`seeds_table` for rows given as (label, its ``--resume`` method folders under
    ``results``, one per seed run, each holding one or more seeds)."""
    from eval.paired import merged

    lines = ["| method | ATE | RPE | ATE (m) | ATE per seed | samples × seeds |", "|---|---|---|---|---|---|"]
    spacing = _load(results, f"{Path(rows[0][1][0]).parent}/protocol.json")["metric_waypoint_spacing"]
    for m, folders in rows:
        err = np.stack(list(merged([results / f for f in folders]).values()))  # (n, S, 2)
        ate, rpe = err[..., 0].mean(0), err[..., 1].mean(0)  # (S,) per seed
        lines.append(f"| {m} | {ate.mean():.3f} ± {ate.std():.3f} | {rpe.mean():.3f} ± {rpe.std():.3f} | "
                     f"{ate.mean() * spacing:.3f} | {' / '.join(f'{a:.3f}' for a in ate)} | "
                     f"{len(err)} × {len(ate)} |")  # fmt: skip
    return "\n".join(lines)


def paired_seeds(results: Path, folders: list[str], pairs: list[tuple[str, str]]) -> str:
    """Paired differences over several seed runs: each sample's difference averaged over the seeds,
    mean ± one standard error over the samples."""
    from eval.paired import merged, paired

    lines = ["| difference | ATE | RPE | samples |", "|---|---|---|---|"]
    for a, b in pairs:
        d = paired(merged([results / f / a for f in folders]), merged([results / f / b for f in folders]))
        lines.append(_paired_line(a, b, d))
    return "\n".join(lines)


def perfect_table(results: Path, name: str) -> str:
    """An ``eval/perfect.py`` JSON: the planner on imagined and on true views, GNM and the oracle."""
    lines = ["| plan | ATE | RPE | ATE (m) | closer than GNM | rank corr., first population |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in _load(results, name)["rows"]:
        rho = f"{r['spearman']:.3f}" if "spearman" in r else "-"
        lines.append(f"| {r['plan']} | {r['ate']:.3f} | {r['rpe']:.3f} | {r['ate_m']:.3f} | {r['beats_gnm']:.2f} | "
                     f"{rho} |")  # fmt: skip
    return "\n".join(lines)


def perfect_paired(results: Path, name: str, pairs=PERFECT_PAIRS) -> str:
    """Paired ATE differences between the rows of an ``eval/perfect.py`` JSON, ± one standard error."""
    rows = {r["key"]: r for r in _load(results, name)["rows"]}
    lines = ["| difference | ATE | samples |", "|---|---|---|"]
    for a, b in pairs:
        d = np.asarray(rows[a]["per_sample_ate"]) - np.asarray(rows[b]["per_sample_ate"])
        se = d.std(ddof=1) / np.sqrt(len(d))
        lines.append(f"| {PERFECT_SHORT[a]} − {PERFECT_SHORT[b]} | {d.mean():+.3f} ± {se:.3f} | {len(d)} |")
    return "\n".join(lines)


def outdoor_test(results: Path) -> str:
    """The same methods on the outdoor test split, with the outdoor checkpoints."""
    return ate_table(results, "planning_outdoor/test100_seeded.json")


COME_SEEDS = ["planning_test/come_seeded", "planning_test/come_seeded_s1", "planning_test/come_seeded_s2"]
COME_ROWS = ["GNM", "NoMaD", "NWM", "CoME"]
COME_PAIRS = [("CoME", "NWM"), ("CoME", "GNM"), ("NWM", "GNM"), ("CoME", "NoMaD")]
OUTDOOR_COME_SEEDS = [f"planning_outdoor/come_seeded{s}" for s in ("", "_s1", "_s2")]
NAVIGATE_TEST = ["navigate/test40_policies_k1.json", "navigate/test40_policies_k4.json", "navigate/test40.json"]
OUTDOOR_NAVIGATE = [f"navigate/outdoor_test40_policies_k{k}.json" for k in (1, 4, 8)] + ["navigate/outdoor_test40.json"]
PAPER = "NWM (paper protocol)"
OUTDOOR_PAPER = (PAPER, [f"planning_outdoor/paper{s}/{PAPER}" for s in ("", "_s1", "_s2")])
OUTDOOR_SEEDS3 = {m: (m, [f"{f}/{m}" for f in OUTDOOR_COME_SEEDS]) for m in COME_ROWS}
OUTDOOR_MEMORY_SEEDS3 = {m: (m, [f"planning_outdoor/memory_rows/{m}", f"planning_outdoor/memory_rows_s12/{m}"])
                         for m in ("NWM+STM", "NWM+LTM")}  # fmt: skip
OUTDOOR_ALL = [*OUTDOOR_SEEDS3.values(), ("CoME (student)", ["planning_outdoor/come_student/CoME (student)"]),
               *OUTDOOR_MEMORY_SEEDS3.values(), OUTDOOR_PAPER]  # the whole outdoor table, 3 seeds each
NAVIGATE_PAIRS = [("NWM@8", "GNM@4"), ("NWM@8", "NoMaD@4"), ("NWM@8", "GNM@1"), ("NWM@8", "GNM@8"),
                  ("CoME@8", "GNM@4"), ("CoME@8", "NWM@8")]


# runs with other checkpoints or planner settings than the shipped defaults
RUN_LABELS = {"navigate_val/nwm20_walls.json": "wall-aware base",
              "navigate_val/student20_route_0.3_k2_r1.json": "1 rollout",
              "navigate_val/student20_route_0.3_k8_r1.json": "1 rollout",
              "navigate/test40_student_route_k2.json": "1 rollout"}  # runs since keep theirs under "protocol"


def _navigate_label(method: str, report: dict) -> str:
    """A closed-loop row's method, with the goal-progress and route terms when the run had them on,
    "on true views" for a perfect world model (``--true-views``), and its checkpoint when it is not
    the shipped one (``RUN_LABELS``)."""
    progress, route = report.get("progress"), report.get("route_weight")
    label = f"{method} + progress {progress['weight']:g} ({progress['reduce']})" if progress else method
    label = f"{label} + route {route:g}" if route else label
    from planners.config import PlanConfig

    protocol = report.get("protocol", {})  # runs before the protocol key: none
    collision, rollouts = protocol.get("collision_weight"), protocol.get("rollouts")
    label = f"{label} + collision {collision:g}" if collision else label
    label = f"{label} on true views" if report.get("true_views") else label
    run_label = report.get("run_label") or (f"{rollouts} rollout{'s' * (rollouts > 1)}"
                                            if rollouts not in (None, PlanConfig.rollouts) else None)
    return f"{label} ({run_label})" if run_label else label


def _load_run(results: Path, name: str) -> dict:
    """A closed-loop JSON, labelled with ``RUN_LABELS``."""
    report = _load(results, name)
    if name in RUN_LABELS:
        report["run_label"] = RUN_LABELS[name]
    return report


PROGRESS_VAL = ["navigate_val/nwm20_k8.json", "navigate_val/nwm20_progress.json"]
PROGRESS_PAIRS = [("NWM + progress 0.1 (mean)@8", "NWM@8")]
ROUTE_VAL = ["navigate_val/nwm20_k8.json", "navigate_val/nwm20_route_0.1.json", "navigate_val/nwm20_route_0.3.json",
             "navigate_val/policies20_k1.json", "navigate_val/nomad20_route_0.3_k1.json"]
ROUTE_PAIRS = [("NWM + route 0.1@8", "NWM@8"), ("NWM + route 0.3@8", "NWM@8"), ("NoMaD + route 0.3@1", "NoMaD@1"),
               ("NWM + route 0.3@8", "NoMaD + route 0.3@1")]
WALLS_VAL = ["navigate_val/nwm20_k8.json", "navigate_val/nwm20_walls.json"]
WALLS_PAIRS = [("NWM (wall-aware base)@8", "NWM@8")]
CONTACT_PREDICT = {"shipped base": "contact/predict_val_shipped.json",
                   "base fine-tuned with pushes": "contact/predict_val_walls.json"}
ROUTE_TEST = NAVIGATE_TEST + ["navigate/test40_route.json", "navigate/test40_nomad_route_k1.json"]
ROUTE_TEST_PAIRS = [("NWM + route 0.3@8", "NWM@8"), ("NWM + route 0.3@8", "GNM@1"), ("NWM + route 0.3@8", "NoMaD@1"),
                    ("NoMaD + route 0.3@1", "NoMaD@1"), ("NWM + route 0.3@8", "NoMaD + route 0.3@1")]

STUDENT = "CoME (student) + route 0.3 (1 rollout)"
STUDENT_COLL = "CoME (student) + route 0.3 + collision 1 (1 rollout)"
STUDENT_NAV_VAL = ["navigate_val/policies20_k1.json", "navigate_val/nwm20_route_0.3.json",
                   "navigate_val/nomad20_route_0.3_k1.json", "navigate_val/student20_route_0.3_k8_r1.json",
                   "navigate_val/student20_route_0.3_k2_r1.json", "navigate_val/student20_route_0.3_k2_r1_coll1.json"]
STUDENT_NAV_VAL_PAIRS = [(f"{STUDENT}@2", f"{STUDENT}@8"), (f"{STUDENT}@2", "NWM + route 0.3@8"),
                         (f"{STUDENT}@2", "NoMaD + route 0.3@1"), (f"{STUDENT}@2", "GNM@1"),
                         (f"{STUDENT_COLL}@2", f"{STUDENT}@2")]
NWM_ROUTE_2 = "NWM + route 0.3 (1 rollout)"  # NWM at the student's settings: what CoME's imagination adds to the map
STUDENT_NAV_TEST = ["navigate/test40_policies_k1.json", "navigate/test40.json", "navigate/test40_route.json",
                    "navigate/test40_nomad_route_k1.json", "navigate/test40_student_route_k2.json",
                    "navigate/test40_student_route_k2_coll1.json", "navigate/test40_nwm_route_k2.json"]
STUDENT_NAV_TEST_PAIRS = [(f"{STUDENT}@2", "GNM@1"), (f"{STUDENT}@2", "NoMaD@1"), (f"{STUDENT}@2", "NWM@8"),
                          (f"{STUDENT}@2", "NWM + route 0.3@8"), (f"{STUDENT}@2", "NoMaD + route 0.3@1"),
                          (f"{STUDENT}@2", "CoME@8"), (f"{STUDENT_COLL}@2", "GNM@1"), (f"{STUDENT_COLL}@2", "NWM@8"),
                          (f"{STUDENT_COLL}@2", f"{STUDENT}@2"), (f"{STUDENT}@2", f"{NWM_ROUTE_2}@2"),
                          (f"{NWM_ROUTE_2}@2", "GNM@1"), (f"{NWM_ROUTE_2}@2", "NoMaD + route 0.3@1")]

OUTDOOR_STUDENT_NAV = OUTDOOR_NAVIGATE[:2] + OUTDOOR_NAVIGATE[3:] + [
    "navigate/outdoor_test40_nomad_route_k1.json", "navigate/outdoor_test40_student_route_k2.json"]
OUTDOOR_STUDENT_NAV_PAIRS = [(f"{STUDENT}@2", "GNM@4"), (f"{STUDENT}@2", "GNM@1"), (f"{STUDENT}@2", "NoMaD@1"),
                             (f"{STUDENT}@2", "NWM@8"), (f"{STUDENT}@2", "NoMaD + route 0.3@1"),
                             ("NoMaD + route 0.3@1", "NoMaD@1"), ("NoMaD + route 0.3@1", "GNM@4")]

PERFECT_TEST = ["navigate/test40_policies_k1.json", "navigate/test40.json", "navigate/test40_true_views.json",
                "navigate/test40_nomad_route_k1.json"]
PERFECT_TEST_PAIRS = [("NWM on true views@8", "NWM@8"), ("NWM on true views@8", "GNM@1"),
                      ("NWM on true views@8", "NoMaD@1"), ("NWM on true views@8", "NoMaD + route 0.3@1")]


def navigate_table(results: Path, names: list[str]) -> str:
    """``eval/navigate.py`` JSONs: one row per method and JSON, with its replanning interval."""
    lines = ["| method | replan every | success | revisit | non-revisit | SPL | collisions / episode | s/decision | "
             "episodes |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in names:
        report = _load_run(results, name)
        for r in report["rows"]:
            split = [f"{v:.2f}" if v == v else "-" for v in (r["revisit_success"], r["nonrevisit_success"])]
            lines.append(f"| {_navigate_label(r['method'], report)} | {report['replan_every']} | {r['success']:.2f} | "
                         f"{split[0]} | {split[1]} | {r['spl']:.2f} | "
                         f"{r['collisions']:.1f} | {r['s_per_decision']:.2f} | {r['episodes']} |")  # fmt: skip
    return "\n".join(lines)


def paired_success(results: Path, names: list[str], pairs: list[tuple[str, str]]) -> str:
    """Success differences between methods on the episodes both ran, each method named with its
    replanning interval as ``METHOD@K`` (the runs must share their episode seed): mean and one
    paired standard error, on all episodes and on the revisits."""
    episodes = {}
    for name in names:
        report = _load_run(results, name)
        episodes.update({f"{_navigate_label(m, report)}@{report['replan_every']}": eps
                         for m, eps in report["episodes"].items()})  # fmt: skip
    lines = ["| difference | all episodes | revisits | episodes (revisits) |", "|---|---|---|---|"]
    for a, b in pairs:
        if a not in episodes or b not in episodes:
            continue
        by_k = {e["episode"]: e for e in episodes[b]}
        both = [(e, by_k[e["episode"]]) for e in episodes[a] if e["episode"] in by_k]
        cells = []
        for keep in (lambda e: True, lambda e: e["revisit"]):
            d = [float(x["success"]) - float(y["success"]) for x, y in both if keep(x)]
            se = f" ± {statistics.stdev(d) / len(d) ** 0.5:.2f}" if len(d) > 1 else ""
            cells.append(f"{statistics.mean(d):+.2f}{se}" if d else "-")
        n_rev = sum(x["revisit"] for x, _ in both)
        label = f"{a} − {b}".replace("@", " every ")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {len(both)} ({n_rev}) |")
    return "\n".join(lines)


def precision_int8(results: Path) -> str:
    """``python -m eval.bench int8`` JSONs: forward seconds and prediction PSNR per precision, per CPU path."""
    lines = ["| CPU path | precision | s/forward (batch 72) | × fp32 | PSNR h=1 | h=2 | h=4 | h=8 |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for tag, label in PATHS:
        path = results / "precision" / f"int8_{tag}.json"
        if not path.is_file():
            continue
        rows = json.loads(path.read_text())["rows"]
        fp32 = next(r for r in rows if r["precision"] == "fp32")["s_per_forward"]
        for r in rows:
            psnr = " | ".join(f"{r['psnr'][h]:.2f}" for h in ("1", "2", "4", "8"))
            lines.append(f"| {label} | {r['precision']} | {r['s_per_forward']:.3f} | {fp32 / r['s_per_forward']:.2f} | "
                         f"{psnr} |")  # fmt: skip
    return "\n".join(lines)


PROGRESS_COSTS = ("latent_mse", "progress_min", "progress_mean", "progress_last",
                  *(f"latent_mse+{w}progress_{r}" for r in ("min", "mean") for w in ("0.001", "0.01", "0.03", "0.1")))


def costs_table(results: Path, name: str, keys=PROGRESS_COSTS) -> str:
    """An ``eval/costs.py`` JSON: per cost, the ATE of CEM's one-iteration answer and how well the cost
    ranks the candidates by their true ATE (Spearman), on imagined views and on the simulator's true views."""
    rows = {r["key"]: r for r in _load(results, name)["runs"][0]["rows"]}
    lines = ["| cost | ATE | rank corr. | ATE, true views | rank corr., true views |", "|---|---|---|---|---|"]
    for key in keys:
        r, true = rows[key], rows.get(f"{key}@sim")
        sim = f"{true['ate']:.3f} | {true['spearman']:.3f}" if true else "- | -"
        lines.append(f"| {r['distance']} | {r['ate']:.3f} | {r['spearman']:.3f} | {sim} |")
    return "\n".join(lines)


def contact_table(results: Path, name: str) -> str:
    """An ``eval/contact.py`` JSON: PSNR (± se) per window kind and horizon, one column per predictor."""
    report = _load(results, name)
    rows = report["rows"]
    ckpts = list(dict.fromkeys(r["ckpt"] for r in rows))
    lines = ["| windows | ahead | " + " | ".join(ckpts) + " |", "|---|---|" + "---|" * len(ckpts)]
    for kind, horizon in dict.fromkeys((r["kind"], r["horizon"]) for r in rows):
        by = {r["ckpt"]: r for r in rows if (r["kind"], r["horizon"]) == (kind, horizon)}
        cells = [f"{by[c]['psnr']:.2f} ± {by[c]['psnr_se']:.2f}" for c in ckpts]
        lines.append(f"| {kind} ({report['windows'][kind]}) | {horizon} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value is not None else "-"


def memory_ablation(results: Path, name: str) -> str:
    """An ``eval/predict.py --memory`` JSON: PSNR per context length, SSIM, the revisit split and the
    time per frame at the longest context, one line per method (± the standard error there)."""
    rows = _load(results, name)["rows"]
    contexts = sorted({r["context"] for r in rows})
    longest = contexts[-1]
    head = [f"PSNR L={L}" for L in contexts] + [f"SSIM L={longest}", f"revisit L={longest}",
                                                  f"non-revisit L={contexts[0]}", f"s/frame L={longest}"]  # fmt: skip
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        by_l = {r["context"]: r for r in rows if r["method"] == method}
        last, first = by_l[longest], by_l[contexts[0]]
        cells = [f"{by_l[L]['psnr']:.2f}" for L in contexts[:-1]]
        cells.append(f"{last['psnr']:.2f} ± {_cell(last['psnr_se'])}")
        cells += [f"{last['ssim']:.3f}", _cell(last["revisit"]["psnr"]), _cell(first["non_revisit"]["psnr"]),
                  f"{last['s_per_frame']:.3f}"]  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


MEMORY_PAIRS = [("CoME", "Base"), ("CoME", "+LTM"), ("CoME", "+SLTM"), ("CoME", "SLTM alone"),
                ("CoME", "+STM+LTM+SLTM"), ("CoME", "CoME (fixed α)"), ("CoME", "CoME (no contrast)"),
                ("CoME", "copy_nearest"), ("CoME (student)", "+SLTM"), ("CoME (student)", "copy_nearest")]


def memory_paired(results: Path, name: str, pairs=MEMORY_PAIRS) -> str:
    """Paired PSNR differences between rows of an ``eval/predict.py --memory`` JSON at each context
    length: A − B per sequence, mean ± one standard error over the sequences."""
    rows = _load(results, name)["rows"]
    contexts = sorted({r["context"] for r in rows})
    per = {(r["method"], r["context"]): np.asarray(r["psnr_per_seq"]) for r in rows}
    lines = ["| difference | " + " | ".join(f"PSNR L={L}" for L in contexts) + " | sequences |",
             "|---" * (len(contexts) + 2) + "|"]  # fmt: skip
    for a, b in pairs:
        cells = []
        for L in contexts:
            d = per[a, L] - per[b, L]
            cells.append(f"{d.mean():+.2f} ± {d.std(ddof=1) / np.sqrt(len(d)):.2f}")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + f" | {len(d)} |")
    return "\n".join(lines)


SLTM_CHOICE = (  # (file under results/memory_val, row, SLTM, alpha, relevance weight, band)
    ("old_sltm_fixed.json", "Base", "-", "-", "-", "-"),
    ("old_sltm_fixed.json", "copy_nearest", "-", "-", "-", "-"),
    ("old_sltm_fixed.json", "+SLTM", "before (3,754 steps)", "2", "1", "-"),
    ("recall_a2_w1.json", "+SLTM", "recall, 1,753 steps", "2", "1", "-"),
    ("recall_a2_w4.json", "+SLTM", "recall, 1,753 steps", "2", "4", "0.5-2.0"),
    ("recall_a2_w16.json", "+SLTM", "recall, 1,753 steps", "2", "16", "0.5-2.0"),
    ("recall_a1_w1.json", "+SLTM", "recall, 1,753 steps", "1", "1", "-"),
    ("recall_a1_w4.json", "+SLTM", "recall, 1,753 steps", "1", "4", "0.5-2.0"),
    ("recall_a1_w16.json", "+SLTM", "recall, 1,753 steps", "1", "16", "0.5-2.0"),
    ("recall_a2_w1.json", "SLTM alone", "recall, 1,753 steps", "-", "-", "-"),
    ("recall2_a1_w1.json", "+SLTM", "recall, 3,589 steps", "1", "1", "-"),
    ("recall2_a1_w4_band.json", "+SLTM", "recall, 3,589 steps", "1", "4", "0.25-0.75"),
    ("recall2_a1_w16_band.json", "+SLTM", "recall, 3,589 steps", "1", "16", "0.25-0.75"),
    ("recall2_a1_w1.json", "SLTM alone", "recall, 3,589 steps", "-", "-", "-"),
)


def memory_choice(results: Path, choices=SLTM_CHOICE) -> str:
    """The spatial expert's settings on the validation worlds: one line per (run, row), PSNR at
    each context length (the runs share the sequences and the seed)."""
    lines = ["| row | SLTM | α | relevance weight | band (m) | PSNR L=50 | PSNR L=512 | SSIM L=512 |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, method, sltm, alpha, weight, band in choices:
        by_l = {r["context"]: r for r in _load(results, f"memory_val/{name}")["rows"] if r["method"] == method}
        lines.append(f"| {method} | {sltm} | {alpha} | {weight} | {band} | {by_l[50]['psnr']:.2f} | "
                     f"{by_l[512]['psnr']:.2f} | {by_l[512]['ssim']:.3f} |")  # fmt: skip
    return "\n".join(lines)


TABLES: dict[str, Callable[[Path], str]] = {
    "precision-plan": precision_plan,
    "precision-inprocess": precision_inprocess,
    "precision-model": precision_model,
    "precision-bench-plan": precision_bench_plan,
    "seeded-val": seeded_val,
    "seeded-test": seeded_test,
    "seeded-test-come": lambda results: ate_table(results, "planning_test/come_seeded.json"),
    "seeded-test-come-paired": lambda results: paired_ate(results, "planning_test/come_seeded",
                                                          [("CoME", "NWM"), ("CoME", "GNM"), ("NWM", "GNM"),
                                                           ("CoME", "NoMaD")]),
    "seeded-test-come-seeds": lambda results: seeds_table(results, COME_SEEDS, COME_ROWS),
    "seeded-test-come-seeds-paired": lambda results: paired_seeds(results, COME_SEEDS, COME_PAIRS),
    "outdoor-test": outdoor_test,
    "outdoor-test-come": lambda results: ate_table(results, "planning_outdoor/come_seeded.json"),
    "outdoor-test-come-paired": lambda results: paired_ate(results, "planning_outdoor/come_seeded", COME_PAIRS),
    "outdoor-test-come-seeds": lambda results: seeds_table(results, OUTDOOR_COME_SEEDS, COME_ROWS),
    "outdoor-test-come-seeds-paired": lambda results: paired_seeds(results, OUTDOOR_COME_SEEDS, COME_PAIRS),
    "outdoor-test-paper": lambda results: seeds_rows(results, [OUTDOOR_PAPER]),
    "outdoor-test-paper-paired": lambda results: paired_kept(
        results, OUTDOOR_PAPER, [OUTDOOR_SEEDS3[m] for m in ("NWM", "GNM", "NoMaD")]),
    "student-val": student_val,
    "student-val-paired": student_val_paired,
    "memory-student-val": lambda results: memory_ablation(results, "memory_val/student.json"),
    "student-test": lambda results: seeds_table(results, ["planning_test/come_student"], ["CoME (student)"]),
    "student-test-paired": student_test_paired,
    "outdoor-student-test": lambda results: seeds_table(results, ["planning_outdoor/come_student"],
                                                        ["CoME (student)"]),
    "outdoor-student-test-paired": lambda results: student_test_paired(
        results, "planning_outdoor/come_student", OUTDOOR_COME_SEEDS, ("CoME", "NWM", "GNM", "NoMaD")),
    "memory-student-test": lambda results: memory_ablation(results, "memory/maze_test_student.json"),
    "table-timing": lambda results: table_timing(results, "planning_test/table6.json"),
    "bench-student": lambda results: bench_seeded(results, "precision/bench_plan_student.json"),
    "bench-seeded": bench_seeded,
    "bench-int8-avx2": bench_int8,
    "int8-val-avx2": int8_val,
    "navigate-test-perfect": lambda results: navigate_table(results, PERFECT_TEST),
    "navigate-test-perfect-paired": lambda results: paired_success(results, PERFECT_TEST, PERFECT_TEST_PAIRS),
    "perfect-val": lambda results: perfect_table(results, "perfect/val40.json"),
    "perfect-val-paired": lambda results: perfect_paired(results, "perfect/val40.json"),
    "outdoor-predict": lambda results: prediction(results, "prediction/outdoor.json"),
    "memory-sltm-val": memory_choice,
    "memory-come-val": lambda results: memory_ablation(results, "memory_val/recall2_come.json"),
    "memory-stm-val": lambda results: memory_ablation(results, "memory_val/old_sltm_ltm_relevance.json"),
    "memory-final-val": lambda results: memory_ablation(results, "memory_val/final_sltm.json"),
    "memory-test": lambda results: memory_ablation(results, "memory/maze_test.json"),
    "memory-outdoor": lambda results: memory_ablation(results, "memory/outdoor_test.json"),
    "memory-outdoor-paired": lambda results: memory_paired(results, "memory/outdoor_test.json"),
    "navigate-val": lambda results: navigate_table(results, [f"navigate_val/policies_k{k}.json" for k in (1, 2, 4, 8)]
                                                   + [f"navigate_val/nwm_k{k}.json" for k in (4, 8)]),
    "navigate-val-policies": lambda results: navigate_table(results, [f"navigate_val/policies20_k{k}.json"
                                                                      for k in (1, 2, 4, 8)]),
    "navigate-test": lambda results: navigate_table(results, NAVIGATE_TEST),
    "precision-int8": precision_int8,
    "navigate-val-progress": lambda results: navigate_table(results, PROGRESS_VAL),
    "navigate-val-progress-paired": lambda results: paired_success(results, PROGRESS_VAL, PROGRESS_PAIRS),
    "navigate-val-route": lambda results: navigate_table(results, ROUTE_VAL),
    "navigate-val-route-paired": lambda results: paired_success(results, ROUTE_VAL, ROUTE_PAIRS),
    "navigate-test-route": lambda results: navigate_table(results, ROUTE_TEST),
    "navigate-val-student": lambda results: navigate_table(results, STUDENT_NAV_VAL),
    "navigate-val-student-paired": lambda results: paired_success(results, STUDENT_NAV_VAL, STUDENT_NAV_VAL_PAIRS),
    "navigate-test-student": lambda results: navigate_table(results, STUDENT_NAV_TEST),
    "navigate-test-student-paired": lambda results: paired_success(results, STUDENT_NAV_TEST, STUDENT_NAV_TEST_PAIRS),
    "navigate-test-route-paired": lambda results: paired_success(results, ROUTE_TEST, ROUTE_TEST_PAIRS),
    "contact-val": lambda results: contact_table(results, "contact/val.json"),
    "navigate-val-walls": lambda results: navigate_table(results, WALLS_VAL),
    "navigate-val-walls-paired": lambda results: paired_success(results, WALLS_VAL, WALLS_PAIRS),
    "contact-predict-val": lambda results: prediction_compare(results, CONTACT_PREDICT),
    "costs-progress-val": lambda results: costs_table(results, "costs_val/progress40.json"),
    "navigate-test-paired": lambda results: paired_success(results, NAVIGATE_TEST, NAVIGATE_PAIRS),
    "outdoor-navigate": lambda results: navigate_table(results, OUTDOOR_NAVIGATE),
    "outdoor-navigate-paired": lambda results: paired_success(results, OUTDOOR_NAVIGATE, NAVIGATE_PAIRS[:4]),
    "outdoor-navigate-student": lambda results: navigate_table(results, OUTDOOR_STUDENT_NAV),
    "outdoor-navigate-student-paired": lambda results: paired_success(results, OUTDOOR_STUDENT_NAV,
                                                                      OUTDOOR_STUDENT_NAV_PAIRS),
    "outdoor-test-memory-rows": lambda results: seeds_rows(results, list(OUTDOOR_MEMORY_SEEDS3.values())),
    "outdoor-test-memory-rows-paired": lambda results: paired_kept_pairs(
        results, [(a, OUTDOOR_SEEDS3[b]) for a in OUTDOOR_MEMORY_SEEDS3.values()
                  for b in ("NWM", "CoME", "GNM", "NoMaD")]),  # fmt: skip
    "outdoor-test-all": lambda results: seeds_rows(results, OUTDOOR_ALL),
}


def render(text: str, results: Path) -> str:
    """``text`` with every generated block remade from ``results``; KeyError for an unknown block."""

    def fill(m: re.Match) -> str:
        if m["name"] not in TABLES:
            raise KeyError(f"unknown report block {m['name']!r}; known: {', '.join(TABLES)}")
        return f"{m.group(1)}{TABLES[m['name']](results)}\n{m.group(4)}"

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a doc's table differs from its JSONs")
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    p.add_argument("--results", type=Path, default=ROOT / "results")
    args = p.parse_args(argv)
    stale = []
    for doc in sorted(args.docs.glob("*.md")):
        text = doc.read_text()
        try:
            new = render(text, args.results)
        except (KeyError, FileNotFoundError, json.JSONDecodeError) as e:
            print(f"report: error: {doc}: {e}", file=sys.stderr)
            return 2
        if new != text:
            stale.append(doc)
            if not args.check:
                atomic_write_text(doc, new)
    verb = "differ from results/ (run python -m eval.report)" if args.check else "rewritten"
    for doc in stale:
        print(f"{doc}: {verb}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
