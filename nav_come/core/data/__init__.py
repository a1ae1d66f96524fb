"""Datasets in the RECON format, their constants, and NWM-convention actions."""

from nav_come.core.data.actions import gt_waypoints, one_step_actions, poses, relative_poses, revisit_mask
from nav_come.core.data.config import METRIC_WAYPOINT_SPACING, DataConfig, data_config, dataset_config
from nav_come.core.data.dataset import TrajectoryDataset
from nav_come.core.data.recon import (
    DataFormatError,
    Trajectory,
    load_frames,
    read_split,
    read_trajectory,
    split_path,
    square_resize,
    write_split,
    write_trajectory,
)

__all__ = [
    "METRIC_WAYPOINT_SPACING",
    "DataConfig",
    "DataFormatError",
    "Trajectory",
    "TrajectoryDataset",
    "data_config",
    "dataset_config",
    "gt_waypoints",
    "load_frames",
    "one_step_actions",
    "poses",
    "read_split",
    "read_trajectory",
    "relative_poses",
    "revisit_mask",
    "split_path",
    "square_resize",
    "write_split",
    "write_trajectory",
]
