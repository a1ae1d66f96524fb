import math
import pickle

import numpy as np
import pytest
import torch
from helpers import LOOP_PERIOD, make_fake_dataset, make_fake_trajectory, smooth_path
from torch.utils.data import DataLoader, WeightedRandomSampler

from nav_come.core.data import (
    DataConfig,
    DataFormatError,
    TrajectoryDataset,
    data_config,
    read_trajectory,
    revisit_mask,
    write_split,
    write_trajectory,
)
from nav_come.core.geometry import se2_compose

T = 30


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    make_fake_dataset(root, {"train": 2, "test": 1}, T=T, H=16)
    return root


def test_shapes_and_dtypes(data_dir):
    ds = TrajectoryDataset(data_dir, "train", context_size=4, pred_len=8, goal_offset=(4, 10), image_size=16)
    assert len(ds) == 2 * (T - 10 - 3)  # t in 3..T-11
    item = ds[5]
    shapes = {
        "context": (4, 3, 16, 16),
        "future": (8, 3, 16, 16),
        "rel_poses": (8, 3),
        "step_actions": (8, 3),
        "context_poses": (4, 3),
        "goal": (3, 16, 16),
        "goal_pose": (3,),
        "goal_offset": (),
        "traj_index": (),
        "t": (),
    }
    assert set(item) == set(shapes)
    for key, shape in shapes.items():
        assert item[key].shape == shape, key
        assert item[key].dtype == (torch.int64 if shape == () else torch.float32), key
    for key in ("context", "future", "goal"):
        assert 0 <= item[key].min() and item[key].max() <= 1
    np.testing.assert_allclose(item["context_poses"][-1], 0, atol=1e-6)
    assert "goal" not in TrajectoryDataset(data_dir, goal_offset=None, image_size=16)[0]
    sampler = WeightedRandomSampler(ds.sample_weights(3.0), num_samples=6, generator=torch.Generator().manual_seed(0))
    batch = next(iter(DataLoader(ds, batch_size=3, sampler=sampler)))
    assert batch["context"].shape == (3, 4, 3, 16, 16) and batch["goal_offset"].shape == (3,)


def test_field_split_layout(tmp_path, data_dir):
    write_split(tmp_path / "recon" / "test" / "traj_names.txt", ["traj_000", "traj_002"])
    ds = TrajectoryDataset(data_dir, "test", split_dir=tmp_path, dataset="recon", image_size=16)
    assert len(ds) == 2 * (T - 11) and ds.spacing == 0.25
    assert TrajectoryDataset(data_dir, "test", split_dir=tmp_path / "recon", image_size=8).spacing == 0.25


def test_poses_match_positions_at_declared_spacing(data_dir):
    spacing = data_config(data_dir).metric_waypoint_spacing
    assert spacing == 0.25
    ds = TrajectoryDataset(data_dir, "train", image_size=16)
    assert ds.spacing == spacing
    item = ds[7]
    traj = read_trajectory(data_dir / "traj_001" if item["traj_index"] else data_dir / "traj_000", load_images=False)
    t = int(item["t"])
    c, s = math.cos(traj.yaw[t]), math.sin(traj.yaw[t])
    for k in range(8):
        dx, dy = traj.position[t + k + 1] - traj.position[t]
        expected = np.array([c * dx + s * dy, -s * dx + c * dy]) / spacing  # R(-yaw_t) (p - p_t) / spacing
        np.testing.assert_allclose(item["rel_poses"][k, :2], expected, atol=1e-5)
    # composing the one-step actions reproduces the relative poses
    pose = np.zeros(3)
    for k in range(8):
        step = item["step_actions"][k].double().numpy() * [spacing, spacing, 1]
        pose = se2_compose(pose, step)
        np.testing.assert_allclose(pose[:2] / spacing, item["rel_poses"][k, :2], atol=1e-4)
        np.testing.assert_allclose(pose[2], item["rel_poses"][k, 2], atol=1e-5)
    half = TrajectoryDataset(data_dir, "train", image_size=16, spacing=0.5)[7]
    np.testing.assert_allclose(half["rel_poses"][:, :2] * 2, item["rel_poses"][:, :2], atol=1e-5)


def test_goal_offsets_in_range_and_deterministic(data_dir):
    kw = dict(goal_offset=(3, 9), pred_len=4, image_size=16)
    ds, again = TrajectoryDataset(data_dir, **kw), TrajectoryDataset(data_dir, **kw, cache=False)
    offsets = [int(ds[i]["goal_offset"]) for i in range(len(ds))]
    assert min(offsets) >= 3 and max(offsets) <= 9 and len(set(offsets)) > 3
    for i in (0, 11, len(ds) - 1):
        a, b = ds[i], again[i]
        for key in a:
            torch.testing.assert_close(a[key], b[key], msg=key)
        g = int(a["goal_offset"])
        if g <= 4:
            torch.testing.assert_close(a["goal"], a["future"][g - 1])
    other = TrajectoryDataset(data_dir, **kw, seed=1)
    assert [int(other[i]["goal_offset"]) for i in range(len(ds))] != offsets


def test_names_and_errors(tmp_path, data_dir):
    assert len(TrajectoryDataset(data_dir, names=["traj_002"], image_size=16)) == T - 11
    write_split(tmp_path / "splits" / "train" / "traj_names.txt", ["ghost"])
    with pytest.raises(DataFormatError, match="'ghost'.*does not exist"):
        TrajectoryDataset(tmp_path, spacing=0.25)
    with pytest.raises(ValueError, match="no sample fits"):
        TrajectoryDataset(data_dir, context_size=20, pred_len=12, image_size=16)
    with pytest.raises(ValueError, match="spacing="):
        TrajectoryDataset(tmp_path, names=[])


def test_optional_command_keys_are_checked(tmp_path):
    make_fake_trajectory(tmp_path / "a", T=6, H=16)
    tr = read_trajectory(tmp_path / "a")
    assert tr.commanded is None and tr.contact is None  # plain RECON data
    commanded, contact = np.ones((6, 3)), np.array([0, 1, 1, 0, 0, 0], bool)
    write_trajectory(tmp_path / "a", tr.frames, tr.position, tr.yaw, commanded=commanded, contact=contact)
    back = read_trajectory(tmp_path / "a", load_images=False)
    assert np.array_equal(back.commanded, commanded) and np.array_equal(back.contact, contact)
    (tmp_path / "a" / "traj_data.pkl").write_bytes(pickle.dumps({"position": tr.position, "yaw": tr.yaw,
                                                                 "commanded": np.ones((5, 3))}))
    with pytest.raises(DataFormatError, match="'commanded' must be finite with shape"):
        read_trajectory(tmp_path / "a", load_images=False)
    with pytest.raises(ValueError, match="contact must have shape"):
        write_trajectory(tmp_path / "b", tr.frames, tr.position, tr.yaw, contact=np.ones(5, bool))


def _revisits_brute_force(position, yaw, min_gap: int = 16, max_dist: float = 0.5, max_yaw: float = math.radians(30)):
    out = np.zeros(len(yaw), dtype=bool)
    for k in range(len(yaw)):
        for j in range(k - min_gap):
            dyaw = abs((yaw[k] - yaw[j] + math.pi) % (2 * math.pi) - math.pi)
            out[k] |= np.hypot(*(position[k] - position[j])) <= max_dist and dyaw <= max_yaw
    return out


@pytest.mark.parametrize("loop", [False, True])
def test_revisit_mask_matches_definition(loop):
    position, yaw = smooth_path(70, seed=4, loop=loop)
    position = position + np.random.default_rng(0).normal(0, 0.05, position.shape)
    for kwargs in ({}, {"min_gap": 5, "max_dist": 1.0, "max_yaw": 1.0}):
        np.testing.assert_array_equal(
            revisit_mask(position, yaw, chunk=7, **kwargs), _revisits_brute_force(position, yaw, **kwargs)
        )


def test_sample_weights_upweight_revisits(tmp_path):
    make_fake_trajectory(tmp_path / "loop", T=60, H=8, loop=True)
    make_fake_trajectory(tmp_path / "walk", T=20, H=8, seed=2)
    ds = TrajectoryDataset(tmp_path, names=["loop", "walk"], spacing=0.25, image_size=8, goal_offset=None)
    w = ds.sample_weights(revisit_weight=5.0)
    assert w.shape == (len(ds),) and w.dtype == torch.float64
    traj, t = ds._index[:, 0], ds._index[:, 1]
    loop = read_trajectory(tmp_path / "loop", load_images=False)
    target_revisits = _revisits_brute_force(loop.position, loop.yaw)[t + 1] & (traj == 0)
    np.testing.assert_array_equal(w.numpy(), np.where(target_revisits, 5.0, 1.0))
    assert (w[(traj == 0) & (t + 1 >= LOOP_PERIOD)] == 5).all()  # second lap repeats exact poses
    assert (w[(traj == 1) | (t + 1 < LOOP_PERIOD - 3)] == 1).all()  # first lap and a short walk: none
    assert ds.revisit_fraction() == pytest.approx(target_revisits.mean())
    assert ds.revisit_fraction(any_future=True) > ds.revisit_fraction()
    assert torch.equal(ds.sample_weights(), torch.ones(len(ds), dtype=torch.float64))


def test_data_config(tmp_path, data_dir):
    recon = data_config("recon")
    assert recon.metric_waypoint_spacing == 0.25 and recon.cem_init_mean == (-0.1, 0.0, 0.0)
    assert data_config("tartan_drive").cem_init_std == (0.07, 0.1, 0.1)
    assert data_config(data_dir).name == "nav_come_sim"
    with pytest.raises(ValueError, match="'sacson'.*'scand'"):
        data_config(tmp_path / "unknown")
    with pytest.raises(ValueError, match="-1.0"):
        DataConfig("x", -1.0)
    (tmp_path / "dataset.json").write_text('{"world": "maze"}')
    with pytest.raises(ValueError, match="metric_waypoint_spacing"):
        data_config(tmp_path)
