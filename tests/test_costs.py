"""eval/costs.py: its rows are what the planner would return with each goal distance."""

import json

import numpy as np
import pytest
from helpers import make_fake_dataset
from test_world_model import SIZE, tiny_world_model

from eval import ate_rpe, costs

FAST = ["--candidates", "6", "--top-k", "2", "--rollouts", "2", "--steps", "1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("costs")
    make_fake_dataset(root / "data", {"train": 1, "val": 2}, T=30, H=SIZE)
    tiny_world_model().save(root / "ckpt")
    return root


def test_spearman_hand_cases():
    a = np.array([0.1, 0.5, 0.2, 0.9])
    assert costs.spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert costs.spearman(a, -a) == pytest.approx(-1.0)
    assert costs.spearman(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)
    assert np.isnan(costs.spearman(a, np.zeros(4)))


@pytest.mark.parametrize("distance", ["dssim", "latent_mse"])
def test_a_distance_row_is_the_planners_answer(setup, distance, tmp_path):
    """One CEM iteration of eval/ate_rpe.py with that distance, on the same samples and seeds."""
    common = ["--data", str(setup / "data"), "--ckpt", str(setup / "ckpt"), "--split", "val", "--n-samples", "3"]
    out = tmp_path / "costs.json"
    fig = tmp_path / "curve.png"
    assert costs.main([*common, *FAST, "--seed", "0", "--json", str(out), "--figure", str(fig)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["sampler"], r["sampler_steps"]) for r in runs] == [("multistep", 1)] and fig.stat().st_size > 1000
    rows = {r["key"]: r for r in runs[0]["rows"]}
    assert set(rows) >= {"dssim", "dssim_half", "pixel_mse", "latent_mse", "prior mean (blind)", "oracle top-5"}
    assert all(-1 <= rows[k]["spearman"] <= 1 for k in ("dssim", "latent_mse"))
    args = ate_rpe.build_parser().parse_args([*common, *FAST, "--methods", "NWM", "--seeds", "0", "--iterations",
                                              "1", "--distance", distance, "--search", "paper"])  # fmt: skip
    nwm = ate_rpe.run(args)["rows"][0]
    assert rows[distance]["ate"] == pytest.approx(nwm["ate"], abs=1e-6)
    assert rows[distance]["rpe"] == pytest.approx(nwm["rpe"], abs=1e-6)
