"""The ATE/RPE harness: output contract, sample index, skipped methods, user mistakes."""

import json

import numpy as np
import pytest
from helpers import add_tiny_policies, make_fake_dataset
from test_world_model import SIZE, tiny_world_model

from eval import ate_rpe

FAST = ["--candidates", "6", "--top-k", "2", "--rollouts", "1", "--steps", "1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ate")
    make_fake_dataset(root / "data", {"train": 1, "test": 2}, T=30, H=SIZE)
    tiny_world_model().save(root / "ckpt")
    add_tiny_policies(root / "ckpt")
    return root


def test_json_contract_and_skipped_methods(setup):
    out = setup / "out.json"
    rc = ate_rpe.main(["--data", str(setup / "data"), "--ckpt", str(setup / "ckpt"), "--methods", "NWM", "CoME",
                       "--n-samples", "3", "--seeds", "0", "1", "--json", str(out), "--plot", str(setup / "p.png"),
                       *FAST])
    assert rc == 0
    got = json.loads(out.read_text())
    assert [r["method"] for r in got["rows"]] == ["NWM"]
    row = got["rows"][0]
    for key in ("ate", "ate_std", "rpe", "rpe_std", "ate_m", "rpe_m", "n"):
        assert np.isfinite(row[key])
    assert row["n"] == 3 and np.isclose(row["ate_m"], row["ate"] * 0.25)
    assert "CoME" in got["skipped"] and got["protocol"]["seeds"] == [0, 1]
    assert (setup / "p.png").stat().st_size > 1000


def test_samples_without_an_index_are_every_eighth_step(setup):
    samples = ate_rpe.load_samples(setup / "data", "test", None, None, None)
    assert len(samples) == 2 * len(range(3, 30 - 8, 8))
    assert all(3 <= s["t"] <= 30 - 9 for s in samples)


def test_same_seeds_same_numbers(setup):
    args = ["--data", str(setup / "data"), "--ckpt", str(setup / "ckpt"), "--methods", "NWM", "--n-samples", "2",
            "--seeds", "3", *FAST]
    a = ate_rpe.run(ate_rpe.build_parser().parse_args(args))["rows"]
    b = ate_rpe.run(ate_rpe.build_parser().parse_args(args))["rows"]
    assert a[0]["ate"] == b[0]["ate"] and a[0]["rpe"] == b[0]["rpe"]


def test_unknown_method_is_one_line(setup, capsys):
    rc = ate_rpe.main(["--data", str(setup / "data"), "--methods", "NWM,GNM"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "unknown method" in err


def test_resume_reuses_done_samples_and_refuses_other_settings(setup, tmp_path, monkeypatch, capsys):
    base = ["--data", str(setup / "data"), "--ckpt", str(setup / "ckpt"), "--methods", "NWM", "--seeds", "0", "1",
            *FAST]  # fmt: skip
    keep = tmp_path / "keep"
    whole = ate_rpe.run(ate_rpe.build_parser().parse_args([*base, "--n-samples", "3"]))["rows"][0]
    first = ate_rpe.run(ate_rpe.build_parser().parse_args([*base, "--n-samples", "2", "--resume", str(keep)]))
    assert sorted(p.name for p in (keep / "NWM").iterdir()) == ["0.json", "1.json"]
    assert first["rows"][0]["n"] == 2
    planned = []
    real = ate_rpe.evaluate

    def counting(planner, samples, *args, **kwargs):  # which samples are planned, not read back
        keep_dir = args[3] if len(args) > 3 else kwargs.get("keep")
        planned.extend(i for i, _ in samples if not (keep_dir / f"{i}.json").is_file())
        return real(planner, samples, *args, **kwargs)

    monkeypatch.setattr(ate_rpe, "evaluate", counting)
    more = ate_rpe.run(ate_rpe.build_parser().parse_args([*base, "--n-samples", "3", "--resume", str(keep)]))
    assert planned == [2]  # only the new sample
    row = more["rows"][0]
    assert row["n"] == 3 and row["ate"] == whole["ate"] and row["rpe"] == whole["rpe"]  # same as one run
    capsys.readouterr()
    rc = ate_rpe.main([*base, "--n-samples", "3", "--resume", str(keep), "--rollouts", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "other settings (cem)" in err


def test_cost_figure_from_reports(setup, tmp_path, capsys):
    from eval import figures

    reports = []
    for steps in (1, 2):
        out = tmp_path / f"s{steps}.json"
        assert ate_rpe.main(["--data", str(setup / "data"), "--ckpt", str(setup / "ckpt"), "--methods", "NWM",
                             "--n-samples", "1", "--seeds", "0", *FAST[:-1], str(steps), "--json", str(out)]) == 0
        reports.append(str(out))
    assert figures.main(["cost", "--json", *reports, "--out", str(tmp_path / "cost.png")]) == 0
    assert (tmp_path / "cost.png").stat().st_size > 1000
    (tmp_path / "bad.json").write_text("{}")
    capsys.readouterr()
    assert figures.main(["cost", "--json", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_plan_collisions_finds_plans_through_walls(tmp_path):
    from envs.occupancy import OccupancyMap
    from envs.worlds import generate_world
    from nav_come.core.data import write_trajectory

    occ = OccupancyMap(generate_world("maze", 7))
    start = occ.sample_free(np.random.default_rng(0), min_clearance=0.5)
    T = 12
    write_trajectory(tmp_path / "maze_000007_00", np.zeros((T, 8, 8, 3), np.uint8), np.tile(start, (T, 1)),
                     np.zeros(T))  # fmt: skip
    samples = [{"traj": "maze_000007_00", "t": 3}] * 2
    stay = np.zeros((8, 3), np.float32)  # every waypoint on the free start
    far = np.stack([np.arange(1, 9) * 40.0, np.zeros(8), np.zeros(8)], 1)  # 80 m ahead: through the walls
    assert ate_rpe.plan_collisions(tmp_path, samples, [stay, far], spacing=0.25) == 0.5
    assert ate_rpe.plan_collisions(tmp_path, [{"traj": "traj_000", "t": 3}], [stay], 0.25) is None
