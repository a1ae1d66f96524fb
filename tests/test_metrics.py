import json
import math
import os

import numpy as np
import pytest
import torch

from nav_come.core.metrics import LPIPSUnavailable, ate, lpips, lpips_available, psnr, rpe, ssim

rng = np.random.default_rng(0)


def test_identical_is_zero():
    gt = rng.normal(0, 2, (8, 2))
    assert ate(gt, gt) == 0 and rpe(gt, gt) == 0


def test_constant_offset():
    gt = rng.normal(0, 2, (8, 2))
    assert ate(gt + [3.0, 4.0], gt) == pytest.approx(5.0)
    assert rpe(gt + [3.0, 4.0], gt) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k, expected_rpe", [(3, math.sqrt(2 * 25 / 7)), (7, math.sqrt(25 / 7))])
def test_single_displaced_waypoint(k, expected_rpe):
    gt = np.cumsum(rng.normal(0, 1, (8, 2)), 0)
    est = gt.copy()
    est[k] += [3.0, 4.0]
    assert ate(est, gt) == pytest.approx(math.sqrt(25 / 8))
    assert rpe(est, gt) == pytest.approx(expected_rpe)


def test_batched_and_torch():
    gt = rng.normal(0, 1, (5, 8, 2))
    est = gt + rng.normal(0, 0.3, (5, 8, 2))
    a, r = ate(est, gt), rpe(torch.from_numpy(est), torch.from_numpy(gt))
    assert a.shape == (5,) and r.shape == (5,)
    for b in range(5):
        assert a[b] == pytest.approx(ate(est[b], gt[b]))
        assert r[b] == pytest.approx(rpe(est[b], gt[b]))
    assert rpe(est, gt, delta=2).shape == (5,)


def test_trajectory_metric_validation():
    with pytest.raises(ValueError, match="same shape"):
        ate(np.zeros((8, 2)), np.zeros((7, 2)))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        ate(np.zeros((8, 3)), np.zeros((8, 3)))
    with pytest.raises(ValueError, match="NaN"):
        rpe(np.full((8, 2), np.nan), np.zeros((8, 2)))
    with pytest.raises(ValueError, match="more than delta"):
        rpe(np.zeros((1, 2)), np.zeros((1, 2)))


def test_matches_evo_when_installed():
    evo = pytest.importorskip("evo.core.metrics")
    from evo.core.trajectory import PosePath3D

    gt, est = rng.normal(0, 1, (8, 2)), rng.normal(0, 1, (8, 2))

    def path(xy):
        quat = np.tile([1.0, 0, 0, 0], (len(xy), 1))
        return PosePath3D(positions_xyz=np.c_[xy, np.zeros(len(xy))], orientations_quat_wxyz=quat)

    ape_metric = evo.APE(evo.PoseRelation.translation_part)
    ape_metric.process_data((path(gt), path(est)))
    rpe_metric = evo.RPE(evo.PoseRelation.translation_part, delta=1, delta_unit=evo.Unit.frames)
    rpe_metric.process_data((path(gt), path(est)))
    assert ate(est, gt) == pytest.approx(ape_metric.get_statistic(evo.StatisticsType.rmse))
    assert rpe(est, gt) == pytest.approx(rpe_metric.get_statistic(evo.StatisticsType.rmse))


def test_psnr():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8
    p = psnr(x, x)
    assert p.shape == (2,) and torch.isinf(p).all()
    torch.testing.assert_close(psnr(x + 0.1, x), torch.full((2,), 20.0))


def test_ssim():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 36, 36, generator=g), 5, 1)  # (2, 3, 32, 32), smooth
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    noise = torch.randn(x.shape, generator=g)
    values = [ssim((x + s * noise).clamp(0, 1), x).mean().item() for s in (0.02, 0.1, 0.3)]
    assert 1 > values[0] > values[1] > values[2]
    small = x[:, :, :6, :7]  # smaller than the 11x11 window
    assert ssim(small, small).shape == (2,) and torch.allclose(ssim(small, small), torch.ones(2))
    assert ssim(small, 1 - small).mean() < 0.9


def test_ssim_reference_value():
    # a constant image against a shifted constant: only the luminance term remains
    x, y = torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.3)
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.3 + c1) / (0.5**2 + 0.3**2 + c1)
    torch.testing.assert_close(ssim(x, y), torch.tensor([expected]))


def test_lpips_needs_user_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("NAV_COME_LPIPS_WEIGHTS", raising=False)
    x = torch.rand(1, 3, 16, 16)
    assert not lpips_available()
    with pytest.raises(LPIPSUnavailable, match="NAV_COME_LPIPS_WEIGHTS"):
        lpips(x, x)
    with pytest.raises(LPIPSUnavailable):
        lpips(x, x, weights=tmp_path / "missing.pt")


def test_lpips_calls_a_user_torchscript_module(tmp_path, monkeypatch):
    class Fake(torch.nn.Module):  # stands in for a real exported LPIPS network
        def forward(self, a, b):
            return (a - b).abs().mean((1, 2, 3)).view(-1, 1, 1, 1)

    path = tmp_path / "lpips.pt"
    torch.jit.save(torch.jit.script(Fake()), os.fspath(path))
    monkeypatch.setenv("NAV_COME_LPIPS_WEIGHTS", os.fspath(path))
    assert lpips_available()
    x = torch.zeros(2, 3, 8, 8)
    torch.testing.assert_close(lpips(x, x + 0.25), torch.full((2,), 0.5))  # inputs scaled to [-1, 1]


def test_paired_differences_against_hand_computed_values():
    from eval.paired import paired

    a = {0: np.array([[1.0, 0.5]]), 1: np.array([[2.0, 0.5]]), 2: np.array([[9.0, 9.0]])}
    b = {0: np.array([[0.0, 0.5]]), 1: np.array([[0.0, 0.0]])}  # sample 2 only in a: ignored
    r = paired(a, b)
    assert r["n"] == 2 and r["ate"] == 1.5 and r["rpe"] == 0.25
    assert np.isclose(r["ate_se"], np.std([1.0, 2.0], ddof=1) / np.sqrt(2))


def test_paired_cli_writes_the_difference_as_json(tmp_path):
    from eval.paired import main

    for method, errs in (("A", [[1.0, 0.5], [2.0, 0.5]]), ("B", [[0.0, 0.5], [0.0, 0.0]])):
        (tmp_path / method).mkdir()
        for i, e in enumerate(errs):
            (tmp_path / method / f"{i}.json").write_text(json.dumps({"err": [e]}))
    assert main([str(tmp_path / "A"), str(tmp_path / "B"), "--json", str(tmp_path / "d.json")]) == 0
    got = json.loads((tmp_path / "d.json").read_text())
    assert (got["a"], got["b"], got["n"], got["ate"], got["rpe"]) == ("A", "B", 2, 1.5, 0.25)
