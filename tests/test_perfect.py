"""eval/perfect.py: the imagined row is NWM's plan; the true-view row scores the simulator's views."""

import json
import math

import pytest
from helpers import add_tiny_policies, make_fake_dataset
from test_world_model import SIZE, tiny_world_model

from envs import collect
from eval import ate_rpe, perfect

SMALL = ["--proposals-nomad", "3", "--proposals-gnm", "2", "--refine", "4", "--rollouts", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("perfect")
    collect.main(["--out", str(root / "data"), "--world", "maze", "--n-traj", "6", "--traj-len", "40", "--seed", "3",
                  "--workers", "1", "--traj-per-world", "1"])  # fmt: skip
    tiny_world_model().save(root / "ckpt")
    add_tiny_policies(root / "ckpt")
    return root


def test_imagined_row_is_nwms_plan_and_the_oracle_bounds_gnm(setup, tmp_path):
    common = ["--data", str(setup / "data"), "--ckpt", str(setup / "ckpt"), "--split", "val", "--n-samples", "2"]
    out = tmp_path / "perfect.json"
    assert perfect.main([*common, *SMALL, "--seed", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {r["key"]: r for r in report["rows"]}
    assert set(rows) == {"imagined", "true", "gnm", "oracle"} and all(r["n"] == 2 for r in rows.values())
    assert report["protocol"]["cost"] == "MSE of autoencoder latents"
    args = ate_rpe.build_parser().parse_args([*common, *SMALL, "--methods", "NWM", "GNM", "--seeds", "0"])
    table = {r["method"]: r for r in ate_rpe.run(args)["rows"]}
    assert rows["imagined"]["ate"] == pytest.approx(table["NWM"]["ate"], abs=1e-6)
    assert rows["imagined"]["rpe"] == pytest.approx(table["NWM"]["rpe"], abs=1e-6)
    assert rows["gnm"]["ate"] == pytest.approx(table["GNM"]["ate"], abs=1e-6)
    oracle, gnm = rows["oracle"]["per_sample_ate"], rows["gnm"]["per_sample_ate"]
    assert all(o <= g + 1e-9 for o, g in zip(oracle, gnm, strict=True))  # GNM's proposal is in the population
    rho = [rows[k]["spearman"] for k in ("imagined", "true")]
    assert all(-1 <= r <= 1 or math.isnan(r) for r in rho)  # NaN: every candidate cost the same


def test_data_not_from_the_simulator_is_one_line(tmp_path, capsys):
    make_fake_dataset(tmp_path / "data", {"train": 1, "val": 1}, T=30, H=SIZE)
    tiny_world_model().save(tmp_path / "ckpt")
    add_tiny_policies(tmp_path / "ckpt")
    code = perfect.main(["--data", str(tmp_path / "data"), "--ckpt", str(tmp_path / "ckpt"), "--n-samples", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "envs.collect" in err


def test_a_perfect_world_model_stops_at_the_first_wall():
    """Waypoints beyond a wall are seen from where the robot stopped; free ones are seen where they are."""
    import numpy as np
    from test_envs import _facing_wall

    from envs.sim import Simulator
    from eval.costs import stop_at_walls

    sim = Simulator(("maze", 3), 16)
    start, wall = _facing_wall(sim)
    ahead = start + np.arange(1, 9)[:, None] * [0.25, 0.0, 0.0]  # 2 m towards a wall 1 m away
    back = start - np.arange(1, 9)[:, None] * [0.02, 0.0, 0.0]  # 16 cm back: free
    sim.set_pose(start + [0.1, 0.0, 0.0])
    robot = sim.pose
    out = stop_at_walls(sim, start, np.stack([ahead, back]))
    stop = int(np.argmax(ahead[:, 0] >= wall.x - wall.a))  # the first waypoint at or past the wall's face
    assert 0 < stop < 8 and np.allclose(out[0, :stop], ahead[:stop]) and (out[0, stop:] == ahead[stop - 1]).all()
    assert np.array_equal(out[1], back) and np.allclose(sim.pose, robot)  # the robot is put back
