"""The memory benchmark (``python -m eval.bench memory``) on tiny checkpoints."""

import torch
from test_memory_eval import tiny_memory_ckpt

from eval import bench


def test_memory_bench_rows_and_composition_counts(tmp_path):
    torch.set_num_threads(1)
    tiny_memory_ckpt(tmp_path / "ckpt")
    out = bench.bench_memory(tmp_path / "ckpt", contexts=(12, 30), batch=4, repeats=1)
    cells = {(r["method"], r["context"]) for r in out["per_frame"]}
    assert cells == {(m, L) for m in bench.MEMORY_ROWS for L in (12, 30)}
    assert all(r["s_per_frame"] > 0 for r in out["per_frame"])
    assert [r["context"] for r in out["ltm"]] == [12, 30] and out["ltm"][1]["s_per_stored_frame"] > 0
    batched, unbatched, base = out["compose"]
    assert base["forwards"] == 1 and unbatched["forwards"] > batched["forwards"] >= 2  # base (with the LTM), sltm
    assert unbatched["samples"] > batched["samples"]  # the LTM partner is the base's own branch: run once
    assert "seconds per predicted frame" in bench.format_memory(out)
