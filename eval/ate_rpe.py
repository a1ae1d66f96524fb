"""ATE/RPE of navigation methods under NWM's planning protocol (docs/design.md §3).

    python eval/ate_rpe.py --data DIR [--methods GNM NoMaD NWM "CoME (student)" NWM+STM NWM+LTM]
                           [--n-samples N] [--seeds 0 1 2] [--history 128] [--json out.json] [--plot out.png]
                           [--resume DIR]
    torchrun --nproc_per_node N eval/ate_rpe.py --data DIR [--device cuda] ...

Each sample of the split's ``navigation_eval.json`` (or, for a dataset without
one, every 8th time step of every trajectory) gives 4 context frames t-3..t,
the goal frame t+8 and the 8 ground-truth waypoints. Every method outputs 8
waypoints; ATE and RPE (nav_come.core.metrics: evo's APE/RPE translation RMSE, no
alignment, no scale correction) are averaged over samples for each seed, and
reported as mean ± std over seeds, in spacing units and in metres.

The memory methods (CoME, CoME (student), NWM+STM, NWM+LTM) also get the episode before each sample:
frames ``t-history+1..t`` of its trajectory with their world poses from ``traj_data.pkl``
go through the planner's ``observe`` (encoded once, memorised by the LTM) before it plans;
the time of that is reported as ``s_per_observe``, apart from ``s_per_plan``.

``--distilled DIR`` plans with the networks distilled for ``--steps`` DDIM steps (default: the
fewest in DIR; :mod:`nav_come.distill`) in place of the base and the experts; compare its rows with
a run without it (the multi-step sampler) on ``--split val`` and ``--split test``.

Seed s plans sample i with a generator seeded from (s, i), so under ``torchrun`` (:mod:`eval.distributed`)
each rank plans every N-th sample and rank 0, which alone prints and writes, reports the numbers one
process would; ``s_per_plan`` and ``s_per_observe`` are then medians over the plans of every rank.

``--resume DIR`` keeps every method's result on every sample as it is done
(``DIR/<method>/<i>.json``, written atomically) and reuses them: an interrupted run picks up where it
stopped, and a larger ``--n-samples`` plans only the new samples (sample i does not depend on
``--n-samples``). ``DIR/protocol.json`` holds the settings the results were made with; a run with
other settings stops with an error instead of mixing them.

``--json`` writes ``{"rows": [{"method", "ate", "ate_std", "rpe", "rpe_std",
"ate_m", "rpe_m", "n"}, ...], "protocol": {...}, "data": str, "wall_s"}`` (``wall_s``: this run's
seconds, data loading included). Methods whose
checkpoints are missing are listed under ``"skipped"`` with the reason. On simulator data
(``envs.collect``) each row also has ``plan_collision`` ("in wall" in the table): the share of
samples whose first-seed plan puts the robot within its radius of an obstacle of the world the
trajectory was driven in (the collision penalty, ``--collision-weight``, is meant to lower it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eval import distributed
from nav_come.core.checkpoint import CheckpointError, checkpoint_hash
from nav_come.core.data import DataFormatError, dataset_config, gt_waypoints, load_frames, poses, read_split, split_path
from nav_come.core.data.config import add_data_args
from nav_come.core.data.recon import data_fingerprint, read_trajectory
from nav_come.core.geometry import se2_compose
from nav_come.core.io import atomic_write_text
from nav_come.core.layout import checkpoints_fingerprint, pick_checkpoint
from nav_come.core.metrics import ate, rpe
from nav_come.core.precision import resolve
from nav_come.core.train_loop import Distributed
from planners.config import BY_LABEL, REGISTRY, TABLE, add_plan_args, plan_config_from_args
from planners.methods import MethodUnavailable, load_method

METHOD_NAMES = {label: m.key for label, m in BY_LABEL.items()}  # the table's rows (planners.methods.REGISTRY)
USER_ERRORS = (ValueError, DataFormatError, CheckpointError, FileNotFoundError)  # one line and exit 2


def parse_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The evaluation CLIs' arguments, with ``--ckpt`` defaulting to the shipped checkpoint of
    ``--data``'s world and ``--threads`` applied."""
    args = parser.parse_args(argv)
    args.ckpt = pick_checkpoint(args.ckpt, args.data)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def run_checked(run, args: argparse.Namespace):
    """``run(args)``, or None after one line on stderr when it fails on a user's mistake (exit 2)."""
    try:
        return run(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def table_labels(names: list[str]) -> list[str]:
    """Methods named by table label or command-line key -> their table labels; ValueError lists the known ones."""
    unknown = [m for m in names if m not in METHOD_NAMES and m.lower() not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHOD_NAMES)} (or their keys: "
                         f"{' '.join(REGISTRY)})")  # fmt: skip
    return [m if m in METHOD_NAMES else REGISTRY[m.lower()].label for m in names]
CONTEXT, GOAL = 4, 8


def load_samples(data: Path, split: str, split_dir, dataset, n: int | None, seed: int = 0) -> list[dict]:
    """The evaluation samples: [{"traj", "t"}], the first ``n`` after a fixed shuffle."""
    index = split_path(data, split, split_dir, dataset).parent / "navigation_eval.json"
    if index.is_file():
        samples = _read_index(index)
    else:  # a dataset without our index (e.g. real RECON): every 8th step of every trajectory
        samples = []
        for name in read_split(split_path(data, split, split_dir, dataset)):
            T = len(read_trajectory(data / name, load_images=False))
            samples += [{"traj": name, "t": t} for t in range(CONTEXT - 1, T - GOAL, GOAL)]
    order = np.random.default_rng(seed).permutation(len(samples))
    return [samples[i] for i in (order[:n] if n else order)]


def _read_index(index: Path) -> list[dict]:
    """The samples of a ``navigation_eval.json``; DataFormatError naming the file when it is not a
    list of {"traj": name, "t": step}."""
    try:
        samples = json.loads(index.read_text())
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{index} is not valid JSON ({err}); fix it or delete it to use every 8th step") from err
    good = isinstance(samples, list) and all(
        isinstance(s, dict) and isinstance(s.get("traj"), str) and type(s.get("t")) is int for s in samples)
    if not good:
        raise DataFormatError(f'{index} must be a list of {{"traj": name, "t": step}}; fix it or delete it '
                              "to use every 8th step")  # fmt: skip
    return samples


def load_sample(data: Path, sample: dict, spacing: float, image_size: int) -> dict:
    """Context (1, 4, 3, H, W), goal (3, H, W) in [0, 1] and GT waypoints (8, 3) in spacing units."""
    t, folder = sample["t"], data / sample["traj"]
    tr = read_trajectory(folder, load_images=False)
    if not CONTEXT - 1 <= t < len(tr) - GOAL:
        raise DataFormatError(f"sample {sample} needs frames {t - CONTEXT + 1}..{t + GOAL}, but {folder} has "
                              f"frames 0..{len(tr) - 1}; fix its \"t\" in navigation_eval.json")  # fmt: skip
    frames = load_frames(folder, [*range(t - CONTEXT + 1, t + 1), t + GOAL], image_size)  # (5, H, W, 3)
    x = torch.from_numpy(frames).float().div(255).movedim(-1, -3)  # (5, 3, H, W)
    return {"context": x[None, :CONTEXT], "goal": x[CONTEXT],
            "gt": gt_waypoints(tr.position, tr.yaw, t, GOAL, spacing=spacing)}  # fmt: skip


def load_history(data: Path, sample: dict, history: int, image_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """The episode up to the sample's frame t: frames (T, 3, H, W) in [0, 1] of t-history+1..t and
    their world poses (T, 3) (x, y metres, yaw radians)."""
    t, folder = sample["t"], data / sample["traj"]
    tr = read_trajectory(folder, load_images=False)
    idx = list(range(max(0, t - history + 1), t + 1))
    frames = torch.from_numpy(load_frames(folder, idx, image_size)).float().div(255).movedim(-1, -3)
    return frames, poses(tr.position, tr.yaw)[idx]


def _load_record(path: Path) -> dict:
    try:
        r = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"kept result {path} is not valid JSON ({err}); delete it to redo that sample") from err
    return {**r, "err": np.asarray(r["err"], np.float64), "pred": np.asarray(r["pred"], np.float32)}


def _save_record(path: Path, r: dict) -> None:
    atomic_write_text(path, json.dumps({**r, "err": r["err"].tolist(), "pred": r["pred"].tolist()}))


def evaluate(planner, samples: list[tuple[int, dict]], seeds: list[int], bar: tqdm, history=None,
             keep: Path | None = None) -> list[tuple]:  # fmt: skip
    """Per sample ``(i, sample)``: ``(i, {"err": (S, 2) ATE/RPE per seed, "pred": waypoints of the
    first seed, "seconds": per plan, "observe_s"})``; seed s plans sample i with a generator seeded
    from (s, i), whichever samples come before it.

    history: i -> (frames, poses) of sample i, given to a planner that has ``observe`` once
    before its plans of that sample (every seed's plan sees the same memory). keep: a folder
    where each sample's result is saved as ``<i>.json`` when done, and read instead of planning
    when it is already there (``--resume``)."""
    out = []
    for i, s in samples:
        done = keep / f"{i}.json" if keep is not None else None
        if done is not None and done.is_file():
            out.append((i, _load_record(done)))
            bar.update(len(seeds))
            continue
        r = {"err": np.zeros((len(seeds), 2)), "seconds": []}
        if history is not None and planner.uses_memory:
            start = time.perf_counter()
            planner.observe(*history(i))
            r["observe_s"] = time.perf_counter() - start
        for j, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(seed * 100_003 + i)
            start = time.perf_counter()
            wp = planner(s["context"], s["goal"], gen).waypoints.cpu().numpy()
            r["seconds"].append(time.perf_counter() - start)
            r["err"][j] = ate(wp[:, :2], s["gt"][:, :2]), rpe(wp[:, :2], s["gt"][:, :2])
            if j == 0:
                r["pred"] = wp
            bar.update()
        if done is not None:
            _save_record(done, r)
        out.append((i, r))
    return out


def check_resume(folder: Path, protocol: dict) -> None:
    """Make ``folder`` the store of results made under ``protocol``, or refuse one made otherwise."""
    path = folder / "protocol.json"
    settings = json.loads(json.dumps(protocol))  # as JSON reads it back (tuples become lists)
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"--resume {folder}: protocol.json is not JSON ({err}); use a new folder") from err
        differ = sorted(k for k in settings.keys() | stored.keys() if settings.get(k) != stored.get(k))
        changed = {"data_content": "the data at --data changed since", "ckpt_content": "the checkpoints changed since"}
        for key in (k for k in differ if k in changed):
            raise ValueError(f"--resume {folder}: {changed[key]} its results were made; use a new folder")
        if differ:
            raise ValueError(f"--resume {folder} holds results made with other settings ({', '.join(differ)}); "
                             "rerun with those settings or use a new folder")  # fmt: skip
    else:
        atomic_write_text(path, json.dumps(settings, indent=2))


def summarise(records: list[dict]) -> dict:
    """Per-seed mean ATE/RPE (spacing units) over :func:`evaluate`'s records of every sample, in order;
    the predictions of the first seed; median seconds per plan (and per observe)."""
    errs = np.stack([r["err"] for r in records], 1)  # (S, N, 2)
    per_seed = np.array([e.mean(0) for e in errs])  # (S, 2), each seed's mean over samples
    seconds = [t for r in records for t in r["seconds"]]
    out = {"ate": per_seed[:, 0], "rpe": per_seed[:, 1], "pred": [r["pred"] for r in records],
           "s_per_plan": float(np.median(seconds))}  # fmt: skip
    if any("observe_s" in r for r in records):
        out["s_per_observe"] = float(np.median([r["observe_s"] for r in records]))
    return out


def cost_terms_protocol(config, ckpt: Path) -> dict:
    """The optional cost terms that are on: {"progress": weight, reduction and head hash},
    {"route_weight": W} and {"clearance_floor": metres}; {} when none is (so that runs without
    them keep matching the ones kept before they existed)."""
    out = {}
    if config.route_weight:
        out["route_weight"] = config.route_weight
    if config.clearance_floor:
        out["clearance_floor"] = config.clearance_floor
    if not config.progress_weight:
        return out
    head = ckpt / "progress"
    return out | {"progress": {"weight": config.progress_weight, "reduce": config.progress_reduce,
                               "head": checkpoint_hash(head) if (head / "model.safetensors").is_file() else None}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python eval/ate_rpe.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="folder of RECON-format trajectory folders")
    p.add_argument("--ckpt", type=Path, help="the methods' checkpoint folder (default: checkpoints/<world of --data>)")
    p.add_argument("--methods", nargs="+", default=TABLE, help=" ".join(METHOD_NAMES))
    p.add_argument("--split", default="test")
    add_data_args(p)
    p.add_argument("--n-samples", type=int, help="evaluate only this many samples")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--history", type=int, default=128, help="memory methods: frames of the episode up to t observed")
    p.add_argument("--device", default="cpu", help="cpu or cuda (torchrun: cuda:LOCAL_RANK, ranks share GPUs)")
    add_plan_args(p)
    p.add_argument("--threads", type=int)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path, help="PNG of planned vs ground-truth waypoints for a few samples")
    p.add_argument("--resume", type=Path, metavar="DIR",
                   help="keep each sample's result in DIR and reuse it: resume a run, or add samples")
    return p


def format_table(rows: list[dict]) -> str:
    walls = any("plan_collision" in r for r in rows)
    lines = [f"{'method':<9} {'ATE':>13} {'RPE':>13} {'ATE (m)':>8} {'RPE (m)':>8} {'n':>4} {'s/plan':>7}"
             + (f" {'in wall':>7}" if walls else "")]  # fmt: skip
    for r in rows:
        lines.append(
            f"{r['method']:<9} {r['ate']:>6.3f} ± {r['ate_std']:<4.3f} {r['rpe']:>6.3f} ± "
            f"{r['rpe_std']:<4.3f} {r['ate_m']:>8.3f} {r['rpe_m']:>8.3f} {r['n']:>4} {r['s_per_plan']:>7.2f}"
            + (f" {r['plan_collision']:>7.3f}" if "plan_collision" in r else "")
        )
    return "\n".join(lines)


def plan_collisions(data: Path, samples: list[dict], plans: list[np.ndarray], spacing: float) -> float | None:
    """Share of samples whose plan (8 waypoints, spacing units, robot frame at t) puts the robot
    within its radius of an obstacle of the simulator world the trajectory was driven in; None
    for data without worlds (e.g. real RECON)."""
    from envs.occupancy import OccupancyMap
    from envs.worlds import ROBOT_RADIUS, generate_world
    from planners.collision import world_of

    try:
        worlds = [world_of(s["traj"]) for s in samples]
    except DataFormatError:
        return None
    maps, trajs, hits = {}, {}, []
    for s, w, plan in zip(samples, worlds, plans, strict=True):
        if w not in maps:
            maps[w] = OccupancyMap(generate_world(*w))
        if s["traj"] not in trajs:
            trajs[s["traj"]] = read_trajectory(data / s["traj"], load_images=False)
        tr = trajs[s["traj"]]
        start = np.array([*tr.position[s["t"]], tr.yaw[s["t"]]])
        world = se2_compose(start, np.concatenate([plan[:, :2] * spacing, plan[:, 2:]], 1))  # (K, 3) metres
        hits.append(min(maps[w].clearance_at(p) for p in world[:, :2]) < ROBOT_RADIUS)
    return float(np.mean(hits))


def run(args, dist: Distributed | None = None) -> dict | None:
    """The report of every method (rank 0; None on the other ranks).

    dist: this process's place under torchrun (:func:`eval.distributed.init`); None: one process on ``args.device``.
    """
    start = time.perf_counter()
    args.methods = table_labels(args.methods)
    if args.history < 1:
        raise ValueError(f"--history must be >= 1 frame, got {args.history}")
    device, is_main = (str(dist.device), dist.is_main) if dist is not None else (args.device, True)
    cfg = dataset_config(args.data, args.dataset, args.spacing)
    sp = cfg.metric_waypoint_spacing
    config = plan_config_from_args(args, cfg, spacing=sp)  # the flags, checked before any data is read
    samples_idx = load_samples(args.data, args.split, args.split_dir, args.dataset, args.n_samples)
    if not samples_idx:
        raise ValueError(f"no evaluation samples in the {args.split} split of {args.data}")
    steps = config.sampler_steps
    planners, skipped = {}, {}
    for m in args.methods:
        try:
            planners[m] = load_method(METHOD_NAMES[m], args.ckpt, device, config)
        except (MethodUnavailable, ValueError) as err:
            skipped[m] = str(err)
    size = next((p.image_size for p in planners.values()), 64)
    samples = [(i, load_sample(args.data, s, sp, size)) for i, s in distributed.shard(samples_idx, dist)]
    memory = [m for m, p in planners.items() if p.uses_memory]

    def history(i: int):
        return load_history(args.data, samples_idx[i], args.history, size)

    distance = next((p.distance.name for p in planners.values() if hasattr(p, "distance")), None)
    protocol = {"split": args.split, "goal_offset": GOAL, "context": CONTEXT, "seeds": args.seeds,
                "n_samples": len(samples_idx), "cem": {"candidates": args.candidates, "top_k": args.top_k,
                "iterations": args.iterations, "rollouts": args.rollouts}, "sampler_steps": steps,
                "metric_waypoint_spacing": sp, "ckpt": str(args.ckpt), "distance": distance,
                "precision": resolve(args.precision, device)}  # fmt: skip
    if memory:
        protocol["history"] = args.history
        protocol["alphas"] = {m: dict(planners[m].denoiser.alphas) for m in memory}  # each composition, as run
        relevance = {m: {n: w for n, w in config.resolved_relevance().items()
                         if n in planners[m].denoiser.experts and w != 1.0} for m in memory}  # fmt: skip
        if any(relevance.values()):  # only when on: a run without relevance weights matches older ones
            protocol["relevance"] = relevance
    if args.distilled:
        protocol["distilled"] = str(args.distilled)
    if config.search == "seeded":  # only when on: a paper-protocol run matches older ones
        protocol["search"] = {"search": "seeded", "proposals_nomad": config.proposals_nomad,
                              "proposals_gnm": config.proposals_gnm, "prior_draws": config.prior_draws,
                              "refine": config.refine, "iterations": config.seeded_iterations}  # fmt: skip
    for key in ("length_weight", "collision_weight"):  # only when on: a run without them matches older ones
        if getattr(args, key):
            protocol[key] = getattr(args, key)
    protocol |= cost_terms_protocol(config, args.ckpt)
    if args.resume is not None:  # every setting but the sample count; the alphas of every method ever run
        content = {"data_content": data_fingerprint(args.data, split_path(args.data, args.split, args.split_dir,
                                                                          args.dataset)),
                   "ckpt_content": checkpoints_fingerprint(args.ckpt)}  # what the kept results were made from
        check_resume(args.resume, {"data": str(args.data), **content, **{k: v for k, v in protocol.items()
                                                                         if k not in ("n_samples", "alphas",
                                                                                      "relevance")}})
        for m in memory:
            weights = protocol.get("relevance", {}).get(m)
            extra = {"relevance": weights} if weights else {}
            check_resume(args.resume / m, {"alphas": protocol["alphas"][m], **extra})

    rows, preds = [], {}
    total = len(planners) * len(samples) * len(args.seeds)
    with tqdm(total=total, desc="ate/rpe", unit="plan", disable=not is_main) as bar:
        for m, planner in planners.items():
            keep = args.resume / m if args.resume is not None else None
            records = distributed.gather(evaluate(planner, samples, args.seeds, bar, history, keep), dist)
            if records is None:  # not rank 0
                continue
            r = summarise(records)
            preds[m] = r["pred"]
            rows.append({"method": m, "ate": float(r["ate"].mean()), "ate_std": float(r["ate"].std()),
                         "rpe": float(r["rpe"].mean()), "rpe_std": float(r["rpe"].std()),
                         "ate_m": float(r["ate"].mean() * sp), "rpe_m": float(r["rpe"].mean() * sp),
                         "n": len(records), "s_per_plan": r["s_per_plan"]})  # fmt: skip
            if "s_per_observe" in r:
                rows[-1]["s_per_observe"] = r["s_per_observe"]
    gt = distributed.gather([(i, s["gt"]) for i, s in samples], dist)
    if not is_main:
        return None
    for row in rows:  # simulator data: how often a plan runs into a wall
        share = plan_collisions(args.data, samples_idx, preds[row["method"]], sp)
        if share is not None:
            row["plan_collision"] = share
    return {"rows": rows, "protocol": protocol, "data": str(args.data), "skipped": skipped,
            "wall_s": round(time.perf_counter() - start, 1),
            "_gt": gt, "_samples_idx": samples_idx, "_preds": preds}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_cli(build_parser(), argv)
    try:
        dist = distributed.init(args.device)
        out = run(args, dist)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.close()
    if out is None:  # not rank 0: rank 0 reports
        return 0
    for m, why in out["skipped"].items():
        print(f"skipped {m}: {why}")
    print(format_table(out["rows"]))
    print(f"wall: {out['wall_s'] / 60:.1f} min (this run; results kept by --resume are not planned again)")
    if args.json:
        atomic_write_text(args.json, json.dumps({k: v for k, v in out.items() if not k.startswith("_")}, indent=2))
    if args.plot and out["rows"]:
        from eval.figures import trajectories_figure

        shown = []
        for k, (gt, i) in enumerate(zip(out["_gt"][:4], out["_samples_idx"][:4], strict=True)):
            methods = {m: p[k] for m, p in out["_preds"].items()}
            shown.append({"gt": gt, "label": f"{i['traj']} t={i['t']}", "methods": methods})
        trajectories_figure(args.plot, shown, out["protocol"]["metric_waypoint_spacing"], "planned vs ground truth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
