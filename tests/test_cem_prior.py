"""The CEM prior measured on a split: a hand-made straight drive gives its known step."""

import numpy as np

from eval.cem_prior import cem_prior, check, main
from nav_come.core.data import write_split, write_trajectory


def _straight(folder, step_m: float, T: int = 33):
    x = np.arange(T) * step_m
    frames = np.zeros((T, 8, 8, 3), np.uint8)
    write_trajectory(folder, frames, np.stack([x, np.zeros(T)], 1), np.zeros(T))


def test_straight_drive_gives_its_step(tmp_path):
    (tmp_path / "dataset.json").write_text('{"name": "nav_come_sim", "metric_waypoint_spacing": 0.25}')
    _straight(tmp_path / "a", 0.25)  # 1 spacing unit per step
    write_split(tmp_path / "splits" / "train" / "traj_names.txt", ["a"])
    mean, std, n = cem_prior(tmp_path)
    assert n == 4  # t = 0, 8, 16, 24
    assert np.allclose(mean, ((1 + 2.5) / 7.5 * 2 - 1, 0.0, 0.0), atol=1e-3)  # dx=1 in [-2.5, 5] -> -0.067
    assert np.allclose(std, 0.0, atol=1e-6)


def test_cli_one_line_error_on_missing_split(tmp_path, capsys):
    assert main(["--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cem_prior: error:")


def test_check_scores_the_prior_against_the_split(tmp_path):
    (tmp_path / "dataset.json").write_text('{"name": "nav_come_sim", "metric_waypoint_spacing": 0.25}')
    _straight(tmp_path / "a", 0.25)
    write_split(tmp_path / "splits" / "val" / "traj_names.txt", ["a"])
    (tmp_path / "splits" / "val" / "navigation_eval.json").write_text('[{"traj": "a", "t": 3}]')
    exact = ((1 + 2.5) / 7.5 * 2 - 1, 0.0, 0.0)
    a, r, best, n = check(tmp_path, "val", exact, (0.01, 0.01, 0.01))
    assert n == 1 and a < 1e-5 and r < 1e-5 and best < 0.2
    a, _, best, _ = check(tmp_path, "val", (-0.1, 0.0, 0.0), (0.02, 0.1, 0.1))  # RECON's: 0.875 units per step
    assert best <= a and abs(a - np.sqrt(np.mean(((np.arange(1, 9)) * 0.875 - np.arange(1, 9)) ** 2))) < 0.05
