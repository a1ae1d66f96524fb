"""Evaluation sharded over torchrun ranks (``eval/distributed.py``) reports what one process reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_memory_eval import memory_data, tiny_memory_ckpt

from eval import ate_rpe, distributed, predict
from nav_come.core.train_loop import Distributed
from planners.policy_common import builtin_policies

REPO = Path(__file__).resolve().parents[1]
RANKS = 2
TIMINGS = {"s_per_plan", "s_per_observe", "s_per_frame", "peak_mb", "prepare_s", "s_per_stored_frame", "wall_s"}
FAST = ["--candidates", "6", "--top-k", "2", "--rollouts", "1", "--steps", "1"]
CASES = {  # script and its arguments past --data and --ckpt
    "ate_rpe": ("eval/ate_rpe.py", ["--methods", "NWM", "GNM", "NWM+STM", "--n-samples", "3", "--seeds", "0", "1",
                                    "--history", "16", *FAST]),
    "predict": ("eval/predict.py", ["--n-samples", "5", "--batch-size", "2", "--steps", "1"]),
    "memory": ("eval/predict.py", ["--memory", "--steps", "1", "--context", "12", "40"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Looping trajectories with memory_eval.json; a tiny world model with an STM, the LTM's settings and a GNM."""
    root = tmp_path_factory.mktemp("sharded")
    memory_data(root / "data")
    tiny_memory_ckpt(root / "ckpt", experts=("stm",))
    torch.manual_seed(0)
    gnm = builtin_policies()["gnm"]
    gnm(gnm.make_config("tiny")).save(root / "ckpt" / "gnm")
    return root


def without_timings(report):
    """The report less what ranks time for themselves."""
    if isinstance(report, dict):
        return {k: without_timings(v) for k, v in report.items() if k not in TIMINGS}
    if isinstance(report, list):
        return [without_timings(v) for v in report]
    return report


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_report_what_one_process_reports(setup, tmp_path, case):
    script, extra = CASES[case]
    args = ["--data", str(setup / "data"), "--ckpt", str(setup / "ckpt"), *extra, "--threads", "1"]
    main = ate_rpe.main if script == "eval/ate_rpe.py" else predict.main
    assert main([*args, "--json", str(tmp_path / "one.json")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(RANKS), script]
    proc = subprocess.run([*cmd, *args, "--json", str(tmp_path / "two.json")], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sum(line.startswith("method") for line in proc.stdout.splitlines()) == 1  # rank 0 alone prints
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert without_timings(two) == without_timings(one)
    assert one["rows"]
    if case == "ate_rpe":  # --methods takes separate words
        assert [r["method"] for r in two["rows"]] == ["NWM", "GNM", "NWM+STM"]


def test_shards_cover_every_item_once_and_gather_restores_the_order():
    items = list("abcde")
    shards = [distributed.shard(items, Distributed(rank, 2, torch.device("cpu"))) for rank in range(2)]
    assert [i for i, _ in shards[0]] == [0, 2, 4] and [i for i, _ in shards[1]] == [1, 3]
    assert distributed.gather(shards[1] + shards[0]) == items  # one process: the pairs it holds, in order
    assert distributed.shard(items) == list(enumerate(items))
