import pickle

import numpy as np
import pytest
from helpers import make_fake_trajectory

from nav_come.core.data import (
    DataFormatError,
    load_frames,
    read_split,
    read_trajectory,
    recon,
    split_path,
    write_split,
    write_trajectory,
)
from nav_come.core.io import atomic_write_text


def _rewrite_pkl(folder, **changes):
    data = pickle.loads((folder / "traj_data.pkl").read_bytes())
    data.update(changes)
    (folder / "traj_data.pkl").write_bytes(pickle.dumps(data))


def test_round_trip(tmp_path):
    frames, position, yaw = make_fake_trajectory(tmp_path / "t0", T=12, H=32, seed=1)
    traj = read_trajectory(tmp_path / "t0")
    assert traj.name == "t0" and len(traj) == 12 and traj.path == tmp_path / "t0"
    assert traj.position.dtype == np.float64 and traj.yaw.dtype == np.float64
    np.testing.assert_array_equal(traj.position, position)  # bit-identical
    np.testing.assert_array_equal(traj.yaw, yaw)
    assert traj.frames.dtype == np.uint8 and traj.frames.shape == (12, 32, 32, 3)
    assert np.abs(traj.frames.astype(float) - frames).mean() < 2.0  # JPEG at quality 95
    assert read_trajectory(tmp_path / "t0", load_images=False).frames is None


def test_pickle_is_plain_and_numpy1_loadable(tmp_path):
    make_fake_trajectory(tmp_path / "t0", T=3, H=8)
    raw = (tmp_path / "t0" / "traj_data.pkl").read_bytes()
    assert b"numpy._core" not in raw  # NumPy 1.x cannot import it
    data = pickle.loads(raw)
    assert type(data) is dict and type(data["position"]) is np.ndarray and data["yaw"].shape == (3,)


def test_rewrite_replaces_existing_folder(tmp_path):
    make_fake_trajectory(tmp_path / "t0", T=6, H=8)
    make_fake_trajectory(tmp_path / "t0", T=4, H=8, seed=3)
    assert len(read_trajectory(tmp_path / "t0")) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t0"]  # no temporaries left


def test_non_square_frames_are_center_cropped(tmp_path):
    frames, _, _ = make_fake_trajectory(tmp_path / "t0", T=3, H=30, W=40)
    traj = read_trajectory(tmp_path / "t0", image_size=15)
    assert traj.frames.shape == (3, 15, 15, 3)
    center = frames[0, :, 5:35].reshape(15, 2, 15, 2, 3).mean((1, 3))  # crop 30x30, area-resize 2x
    assert np.abs(traj.frames[0].astype(float) - center).mean() < 3.0
    assert load_frames(tmp_path / "t0", [2, 0], None).shape == (2, 30, 40, 3)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda f: (f / "traj_data.pkl").unlink(), "traj_data.pkl is missing"),
        (lambda f: (f / "traj_data.pkl").write_bytes(b"\x80\x04garbage"), "cannot be unpickled"),
        (lambda f: (f / "traj_data.pkl").write_bytes(pickle.dumps([1, 2])), "must hold a dict"),
        (lambda f: _rewrite_pkl(f, yaw=np.zeros((5, 1))), r"yaw has shape \(T,1\).*squeeze it"),
        (lambda f: _rewrite_pkl(f, yaw=np.zeros(4)), r"position has 5 steps but yaw has 4"),
        (lambda f: _rewrite_pkl(f, yaw=np.zeros((5, 2))), r"yaw has shape \(5, 2\)"),
        (lambda f: _rewrite_pkl(f, position=np.zeros((5, 3))), r"position has shape \(5, 3\)"),
        (lambda f: _rewrite_pkl(f, position=np.full((5, 2), np.nan)), "position has NaN or inf"),
        (lambda f: _rewrite_pkl(f, yaw=np.array([0, 0, np.inf, 0, 0])), "yaw has NaN or inf.*step 2"),
        (lambda f: (f / "4.jpg").unlink(), "4 jpg frames but traj_data.pkl has 5 poses"),
        (lambda f: (f / "4.jpg").rename(f / "7.jpg"), "missing frame 4.jpg"),
        (lambda f: (f / "2.jpg").write_bytes(b"not a jpeg"), "2.jpg is not a readable JPEG"),
    ],
)
def test_malformed_inputs(tmp_path, corrupt, message):
    folder = tmp_path / "bad"
    make_fake_trajectory(folder, T=5, H=8)
    corrupt(folder)
    with pytest.raises(DataFormatError, match=message) as info:
        read_trajectory(folder)
    assert "bad" in str(info.value)  # names the offending file or folder


def test_missing_folder(tmp_path):
    with pytest.raises(DataFormatError, match="does not exist"):
        read_trajectory(tmp_path / "nope")


def test_interrupted_write_leaves_no_valid_folder(tmp_path, monkeypatch):
    real_write, calls = recon._write_jpg, []

    def crash_midway(path, rgb, quality):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        real_write(path, rgb, quality)

    monkeypatch.setattr(recon, "_write_jpg", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        make_fake_trajectory(tmp_path / "t0", T=6, H=8)
    assert not (tmp_path / "t0").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary is cleaned up too
    with pytest.raises(DataFormatError):
        read_trajectory(tmp_path / "t0")


def test_interrupted_rewrite_keeps_the_old_folder(tmp_path, monkeypatch):
    make_fake_trajectory(tmp_path / "t0", T=6, H=8)

    def disk_full(*args):
        raise OSError("disk full")

    monkeypatch.setattr(recon, "_write_jpg", disk_full)
    with pytest.raises(OSError):
        make_fake_trajectory(tmp_path / "t0", T=4, H=8)
    assert len(read_trajectory(tmp_path / "t0")) == 6


def test_writer_rejects_bad_arrays(tmp_path):
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="yaw must have shape"):
        write_trajectory(tmp_path / "t", frames, np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="uint8"):
        write_trajectory(tmp_path / "t", frames.astype(float), np.zeros((3, 2)), np.zeros(3))
    assert not (tmp_path / "t").exists()


def test_split_round_trip_and_layouts(tmp_path):
    names = ["traj_b", "traj_a", "2023-01-01_run"]
    path = split_path(tmp_path, "val")
    assert path == tmp_path / "splits" / "val" / "traj_names.txt"
    write_split(path, names)
    assert read_split(path) == names
    assert split_path("/d", "test", "/s", "recon") == split_path("/x", "test", "/s/recon")
    assert str(split_path("/d", "test", "/s", "recon")).endswith("s/recon/test/traj_names.txt")
    with pytest.raises(DataFormatError, match="split file .* does not exist"):
        read_split(split_path(tmp_path, "train"))
    with pytest.raises(ValueError):
        write_split(path, ["a\nb"])


def test_atomic_write_text(tmp_path):
    atomic_write_text(tmp_path / "sub" / "a.json", "{}")
    atomic_write_text(tmp_path / "sub" / "a.json", '{"x": 1}')
    assert (tmp_path / "sub" / "a.json").read_text() == '{"x": 1}'
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.json"]
