"""Per-dataset constants: waypoint spacing, frame rate and the NWM planning stats.

``metric_waypoint_spacing`` is metres per step of the dataset at its frame rate
(4 Hz for all of them). Dividing robot-frame metres by it gives "spacing units",
the unit of every action, waypoint and ATE/RPE value in this project (docs/design.md §2).
The CEM stats are those of NWM's ``planning_eval.py`` (docs/design.md §3): ``action_min`` and
``action_max`` map a step (dx, dy) in spacing units to [-1, 1]; ``cem_init_mean`` and
``cem_init_std`` are the initial CEM distribution of (dx, dy, yaw) in that
normalised space. The simulator's (``nav_come_sim``) are measured the same way on our
training split (:mod:`nav_come.core.data.cem_prior`); RECON's would move every candidate about
0.9 units per step where our robot averages 0.5.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

METRIC_WAYPOINT_SPACING: dict[str, float] = {
    "recon": 0.25,
    "scand": 0.38,
    "tartan_drive": 0.72,
    "go_stanford": 0.12,
    "sacson": 0.255,
    "nav_come_sim": 0.25,  # our MuJoCo simulator: 1 m/s at 4 Hz
}

ACTION_MIN: tuple[float, float] = (-2.5, -4.0)
ACTION_MAX: tuple[float, float] = (5.0, 4.0)

# (mean, std) of the initial CEM distribution of (dx, dy, yaw), normalised space.
CEM_INIT: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "recon": ((-0.1, 0.0, 0.0), (0.02, 0.1, 0.1)),
    "scand": ((-0.25, 0.0, 0.0), (0.04, 0.1, 0.1)),
    "sacson": ((-0.33, 0.0, 0.0), (0.03, 0.1, 0.1)),
    "tartan_drive": ((0.5, 0.0, 0.0), (0.07, 0.1, 0.1)),
    "go_stanford": ((-0.1, 0.0, 0.0), (0.02, 0.1, 0.1)),  # NWM ships none: recon's
    # ours, measured on the training split: python -m eval.cem_prior --data data/maze
    "nav_come_sim": ((-0.2, 0.0, 0.0), (0.074, 0.07, 0.213)),
}

DATASET_JSON = "dataset.json"


@dataclass
class DataConfig:
    """Constants of one dataset.

    name: dataset name (a key of ``METRIC_WAYPOINT_SPACING`` or a simulator world).
    metric_waypoint_spacing: metres per step; divides robot-frame metres into spacing units.
    rate_hz: frame rate of the trajectories.
    action_min, action_max: (dx, dy) bounds in spacing units that CEM maps to [-1, 1].
    cem_init_mean, cem_init_std: initial CEM (dx, dy, yaw) distribution, normalised space.
    """

    name: str
    metric_waypoint_spacing: float
    rate_hz: float = 4.0
    action_min: tuple[float, float] = ACTION_MIN
    action_max: tuple[float, float] = ACTION_MAX
    cem_init_mean: tuple[float, float, float] = CEM_INIT["recon"][0]
    cem_init_std: tuple[float, float, float] = CEM_INIT["recon"][1]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"DataConfig.name must be a non-empty string, got {self.name!r}")
        for field in ("metric_waypoint_spacing", "rate_hz"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"DataConfig.{field} must be a finite number > 0, got {value!r}")
            setattr(self, field, float(value))
        for field, n in (("action_min", 2), ("action_max", 2), ("cem_init_mean", 3), ("cem_init_std", 3)):
            value = tuple(float(v) for v in getattr(self, field))
            if len(value) != n or not all(math.isfinite(v) for v in value):
                raise ValueError(f"DataConfig.{field} must be {n} finite numbers, got {getattr(self, field)!r}")
            setattr(self, field, value)
        if any(lo >= hi for lo, hi in zip(self.action_min, self.action_max, strict=True)):
            raise ValueError(
                f"DataConfig.action_min must be below action_max per axis, got {self.action_min} and {self.action_max}"
            )
        if any(s <= 0 for s in self.cem_init_std):
            raise ValueError(f"DataConfig.cem_init_std must be > 0, got {self.cem_init_std}")


def _known(name: str) -> DataConfig:
    mean, std = CEM_INIT[name]
    return DataConfig(name, METRIC_WAYPOINT_SPACING[name], cem_init_mean=mean, cem_init_std=std)


def _from_json(path: Path) -> DataConfig:
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read dataset metadata ({e})") from e
    if not isinstance(meta, dict) or "metric_waypoint_spacing" not in meta:
        raise ValueError(f"{path}: needs a JSON object with a 'metric_waypoint_spacing' key (metres per step)")
    name = meta.get("name") or meta.get("world") or path.parent.name
    base = _known(name) if name in METRIC_WAYPOINT_SPACING else _known("nav_come_sim")
    fields = {f.name for f in dataclasses.fields(DataConfig)} - {"name"}
    overrides = {k: v for k, v in meta.items() if k in fields}
    try:
        return dataclasses.replace(base, name=str(name), **overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def data_config(name_or_dir: str | os.PathLike) -> DataConfig:
    """Constants for a known dataset name or a data folder.

    Resolution order: a known name (``METRIC_WAYPOINT_SPACING``); a folder holding
    ``dataset.json`` (its ``metric_waypoint_spacing`` and ``name``/``world`` are read,
    plus any other ``DataConfig`` field it sets); a folder whose own name is a known
    dataset (e.g. the field's processed ``.../recon``). Anything else raises ValueError.
    """
    key = os.fspath(name_or_dir)
    if key in METRIC_WAYPOINT_SPACING:
        return _known(key)
    folder = Path(key)
    if (folder / DATASET_JSON).is_file():
        return _from_json(folder / DATASET_JSON)
    if folder.is_dir() and folder.name in METRIC_WAYPOINT_SPACING:
        return _known(folder.name)
    raise ValueError(
        f"unknown dataset {key!r}: give one of {sorted(METRIC_WAYPOINT_SPACING)} "
        f"or a data folder containing {DATASET_JSON} with a 'metric_waypoint_spacing' key"
    )


def dataset_config(data_dir: str | os.PathLike, dataset: str | None = None, spacing: float | None = None) -> DataConfig:
    """Constants of the dataset in ``data_dir``, for any dataset name.

    ``dataset`` (the name the field's split layout uses) picks a known dataset's constants, else
    the folder's ``dataset.json`` is read (the name stays ``dataset``), else the folder's own name
    if known. ``spacing`` (metres per step, e.g. ``--spacing``) overrides the spacing, and lets a
    dataset with no ``dataset.json`` and an unknown name be read at all (with RECON's CEM prior).
    Raises ValueError naming the fix when nothing gives a spacing.
    """
    if spacing is not None and not (isinstance(spacing, (int, float)) and math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"--spacing must be a number of metres per step > 0, got {spacing!r}")
    folder = Path(data_dir)
    base = None
    if dataset in METRIC_WAYPOINT_SPACING:
        base = _known(dataset)
    elif (folder / DATASET_JSON).is_file():
        base = _from_json(folder / DATASET_JSON)
        base = dataclasses.replace(base, name=dataset) if dataset else base
    elif dataset is None and folder.name in METRIC_WAYPOINT_SPACING:
        base = _known(folder.name)
    if spacing is not None:
        base = base or DataConfig(dataset or folder.name or "data", float(spacing))
        return dataclasses.replace(base, metric_waypoint_spacing=float(spacing))
    if base is None:
        raise ValueError(
            f"no waypoint spacing for dataset {dataset or folder.name!r} in {folder}: pass --spacing METRES_PER_STEP, "
            f"name a known dataset ({', '.join(sorted(METRIC_WAYPOINT_SPACING))}) or add {DATASET_JSON} with a "
            "'metric_waypoint_spacing' key to the data folder"
        )
    return base


def add_data_args(p) -> None:
    """The flags every CLI that reads a dataset shares: the field's split layout, the dataset's
    name and its waypoint spacing (:func:`dataset_config`)."""
    p.add_argument("--split-dir", type=Path, help="the field's split layout: SPLIT_DIR/DATASET/{train,test}")
    p.add_argument("--dataset", help="dataset name (split layout, spacing, CEM prior), e.g. recon")
    p.add_argument("--spacing", type=float, help="metres per step of a dataset the project does not know "
                                                 "(default: from its dataset.json or --dataset)")  # fmt: skip
