"""eval/bench.py int8: dynamic int8 of the base DiT, side by side with fp32 and bf16."""

import math

import torch
from helpers import make_fake_dataset
from test_world_model import SIZE, tiny_world_model

from eval import bench


def test_quantized_dit_is_a_close_copy_and_leaves_the_original_alone():
    wm = tiny_world_model()
    before = {k: v.clone() for k, v in wm.dit.state_dict().items()}
    q = bench.quantized_dit(wm.dit)
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in q.modules())
    assert all(torch.equal(v, wm.dit.state_dict()[k]) for k, v in before.items())
    (c, h, w), C = wm.latent_shape, wm.context
    g = torch.Generator().manual_seed(0)
    x, t, a = torch.randn(4, c, h, w, generator=g), torch.rand(4, generator=g), torch.randn(4, 3, generator=g)
    ctx = torch.randn(4, C, c, h, w, generator=g)
    with torch.no_grad():
        ref, out = wm.dit(x, t, context=ctx, action=a), q(x, t, context=ctx, action=a)
    assert out.shape == ref.shape and float((out - ref).norm() / ref.norm()) < 0.2


def test_int8_bench_reports_each_precision_on_the_same_windows(tmp_path, capsys):
    make_fake_dataset(tmp_path / "data", {"train": 1, "val": 2}, T=30, H=SIZE)
    tiny_world_model().save(tmp_path / "ckpt")
    out = bench.bench_int8(tmp_path / "ckpt", tmp_path / "data", n_samples=4, repeats=1)
    assert [r["precision"] for r in out["rows"]] == ["fp32", "bf16", "int8"]
    assert out["n_samples"] == 4 and out["batch"] == bench.INT8_BATCH and "auto_precision" in out
    for r in out["rows"]:
        assert r["s_per_forward"] > 0 and set(r["psnr"]) == {1, 2, 4, 8}
        assert all(math.isfinite(v) for v in r["psnr"].values())
    table = bench.format_int8(out).splitlines()
    assert len(table) == 4 and table[1].split()[0] == "fp32" and table[1].split()[2] == "1.00"


def test_int8_bench_without_data_is_one_line(tmp_path, capsys):
    assert bench.main(["int8", "--data", str(tmp_path / "nope"), "--ckpt", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
