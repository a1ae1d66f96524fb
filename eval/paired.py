"""Paired differences between two methods' per-sample results kept by ``eval/ate_rpe.py --resume``.

    python -m eval.paired runs/gpu100/CoME runs/gpu100/NWM [--seed 0] [--json paired.json]

Each folder holds ``<i>.json`` per sample (``err``: ATE/RPE per seed). Over the samples both
folders have, it prints the mean of (A - B) and its standard error, for ATE and RPE, each
sample's error averaged over its seeds (or taken at ``--seed`` index k).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from nav_come.core.io import atomic_write_text


def records(folder: Path) -> dict[int, np.ndarray]:
    """{sample index: err (S, 2)} of one method's folder."""
    return {int(f.stem): np.asarray(json.loads(f.read_text())["err"]) for f in folder.glob("*.json")
            if f.stem.isdigit()}  # fmt: skip


def merged(folders: list[Path]) -> dict[int, np.ndarray]:
    """{sample index: err (S, 2)} of one method over several folders, one per seed run (each folder's
    seeds stacked in order), on the samples that every folder holds."""
    per = [records(f) for f in folders]
    ids = sorted(set.intersection(*(set(r) for r in per)))
    return {i: np.concatenate([r[i] for r in per]) for i in ids}


def paired(a: dict[int, np.ndarray], b: dict[int, np.ndarray], seed: int | None = None) -> dict:
    """n, and mean and standard error of a - b for ATE and RPE over the common samples."""
    ids = sorted(a.keys() & b.keys())
    if len(ids) < 2:
        raise ValueError(f"need at least 2 common samples, got {len(ids)}")
    pick = (lambda e: e.mean(0)) if seed is None else (lambda e: e[seed])
    d = np.array([pick(a[i]) - pick(b[i]) for i in ids])  # (n, 2)
    se = d.std(0, ddof=1) / np.sqrt(len(d))
    return {"n": len(ids), "ate": float(d[:, 0].mean()), "ate_se": float(se[0]), "rpe": float(d[:, 1].mean()),
            "rpe_se": float(se[1])}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.paired", description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="--resume DIR/<method> of method A")
    p.add_argument("b", type=Path, help="--resume DIR/<method> of method B")
    p.add_argument("--seed", type=int, help="seed index to compare (default: the mean over seeds)")
    p.add_argument("--json", type=Path, help="also write the difference here, with the two methods' names")
    args = p.parse_args(argv)
    try:
        r = paired(records(args.a), records(args.b), args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.a.name} - {args.b.name}: n={r['n']}  ATE {r['ate']:+.3f} ± {r['ate_se']:.3f}  "
          f"RPE {r['rpe']:+.3f} ± {r['rpe_se']:.3f}  (± one standard error)")
    if args.json:
        record = {"a": args.a.name, "b": args.b.name, "seed": args.seed, **r}
        atomic_write_text(args.json, json.dumps(record, indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
