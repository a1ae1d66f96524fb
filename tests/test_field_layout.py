"""Any dataset name reads: the field's split layout under a name the project does not know, its
spacing from ``dataset.json`` or ``--spacing``."""

import json

import numpy as np
import pytest
from helpers import STEP_M, make_fake_trajectory

from eval import cem_prior
from nav_come.core.data import TrajectoryDataset, dataset_config, write_split
from nav_come.core.data.recon import split_path


@pytest.fixture
def field(tmp_path):
    """Trajectories in one folder, split files in the field's layout under the unknown name 'lab_bot'."""
    data, splits = tmp_path / "lab_bot", tmp_path / "splits"
    names = {"train": ["run_a", "run_b"], "test": ["run_c"]}
    for i, name in enumerate(n for ns in names.values() for n in ns):
        make_fake_trajectory(data / name, 40, 32, seed=i)
    for split, ns in names.items():
        write_split(split_path(data, split, splits, "lab_bot"), ns)
    return data, splits


def test_an_unknown_name_without_spacing_says_how_to_give_one(field):
    data, splits = field
    with pytest.raises(ValueError, match="no waypoint spacing for dataset 'lab_bot'.*pass --spacing"):
        dataset_config(data, "lab_bot")
    with pytest.raises(ValueError, match="pass spacing="):
        TrajectoryDataset(data, "train", split_dir=splits, dataset="lab_bot", context_size=4, pred_len=8)


def test_the_field_layout_reads_under_an_unknown_name_with_a_spacing(field):
    data, splits = field
    assert dataset_config(data, "lab_bot", 0.3).metric_waypoint_spacing == 0.3
    ds = TrajectoryDataset(data, "train", split_dir=splits, dataset="lab_bot", context_size=4, pred_len=8,
                           spacing=STEP_M)  # fmt: skip
    assert len(ds) > 0 and ds.spacing == STEP_M
    mean, std, n = cem_prior.cem_prior(data, "train", splits, "lab_bot", spacing=STEP_M)
    assert n > 0 and np.isfinite(mean).all()
    assert cem_prior.main(["--data", str(data), "--split-dir", str(splits), "--dataset", "lab_bot",
                           "--spacing", str(STEP_M)]) == 0  # fmt: skip


def test_dataset_json_gives_the_spacing_of_any_name(field):
    data, splits = field
    (data / "dataset.json").write_text(json.dumps({"name": "lab_bot", "metric_waypoint_spacing": 0.4}))
    cfg = dataset_config(data, "lab_bot")
    assert (cfg.name, cfg.metric_waypoint_spacing) == ("lab_bot", 0.4)
    ds = TrajectoryDataset(data, "test", split_dir=splits, dataset="lab_bot", context_size=4, pred_len=8)
    assert ds.spacing == 0.4
    assert dataset_config(data, "lab_bot", 0.25).metric_waypoint_spacing == 0.25  # --spacing wins


def test_known_names_keep_their_constants(tmp_path):
    assert dataset_config(tmp_path, "recon").metric_waypoint_spacing == 0.25
    assert dataset_config(tmp_path / "scand").metric_waypoint_spacing == 0.38  # the folder's own name
    with pytest.raises(ValueError, match="--spacing must be"):
        dataset_config(tmp_path, "recon", -1.0)
