"""traj_data.pkl is unpickled with an allow-list: code-running pickles are refused
unexecuted, and pickles written the way the field's datasets write them still load."""

import os
import pickle
import pickletools
import subprocess
import warnings

import numpy as np
import pytest
from helpers import make_fake_trajectory

from nav_come.core.data import DataFormatError, read_trajectory, recon

T = 4


def _folder_with_pickle(tmp_path, raw: bytes):
    """A valid T-frame trajectory folder whose traj_data.pkl is replaced by ``raw``."""
    folder = tmp_path / "traj"
    make_fake_trajectory(folder, T=T, H=8)
    (folder / "traj_data.pkl").write_bytes(raw)
    return folder


def _poses(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(T, 2)), rng.uniform(-np.pi, np.pi, T)  # float64 (T, 2), (T,)


def _numpy1_names(raw: bytes) -> bytes:
    """The same pickle as NumPy 1.x writes it: module ``numpy.core`` instead of ``numpy._core``."""
    if raw[1] < 4:  # GLOBAL opcodes: text lines
        return raw.replace(b"numpy._core.", b"numpy.core.")
    for old in (b"multiarray", b"numeric"):  # SHORT_BINUNICODE: length-prefixed, re-framed by optimize
        new_name, old_name = b"numpy.core." + old, b"numpy._core." + old
        raw = raw.replace(bytes([0x8C, len(old_name)]) + old_name, bytes([0x8C, len(new_name)]) + new_name)
    return pickletools.optimize(raw)


# ----------------------------------------------------------------------------- refused


class _Payload:
    """Looks like pose data, but unpickling it runs ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    return {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "subprocess.call": _Payload(subprocess.call, ["touch", str(marker)]),
        "builtins.exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.eval": _Payload(eval, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("kind", ["os.system", "subprocess.call", "builtins.exec", "builtins.eval"])
@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_code_running_pickle_is_refused_unexecuted(tmp_path, kind, protocol):
    marker = tmp_path / "MARKER"
    position, yaw = _poses()
    evil = {"position": position, "yaw": yaw, "meta": _payloads(marker)[kind]}  # hidden among real poses
    folder = _folder_with_pickle(tmp_path, pickle.dumps(evil, protocol=protocol))
    with pytest.raises(DataFormatError) as info:
        read_trajectory(folder)
    message = str(info.value)
    refused = {"os.system": f"{os.system.__module__}.system"}.get(kind, kind)  # posix.system on Linux
    if protocol < 3:  # pickle writes Python 2 names: commands.call, __builtin__.exec
        refused = refused.replace("subprocess.", "commands.").replace("builtins.", "__builtin__.")
    assert str(folder / "traj_data.pkl") in message and refused in message
    assert "not a plain RECON pose pickle" in message and "not executed" in message
    assert "\n" not in message  # one line
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [
        ("os", "system"),
        ("posix", "system"),
        ("subprocess", "Popen"),
        ("builtins", "getattr"),
        ("builtins", "__import__"),
        ("__builtin__", "eval"),
        ("numpy", "load"),
        ("numpy.testing._private.utils", "runstring"),
        ("numpy._core.multiarray", "frombuffer"),
        ("pickle", "loads"),
        ("nav_come.core.data.recon", "write_trajectory"),
    ],
)
def test_any_other_global_is_refused(tmp_path, module, name):
    raw = f"c{module}\n{name}\n(S'x'\ntR.".encode()  # protocol 0: GLOBAL, then call it with ('x',)
    folder = _folder_with_pickle(tmp_path, raw)
    with pytest.raises(DataFormatError, match=rf"traj_data\.pkl is not a plain RECON pose pickle: .*{module}\.{name}"):
        read_trajectory(folder)


def test_allowed_helpers_refuse_misuse(tmp_path):
    raw = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(DataFormatError, match="_codecs.encode with encoding 'rot13'.*not executed"):
        read_trajectory(_folder_with_pickle(tmp_path, raw))
    raw = b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R."  # bytes(1 GiB)
    with pytest.raises(DataFormatError, match="builtins.bytes with arguments"):
        read_trajectory(_folder_with_pickle(tmp_path, raw))


# ----------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("protocol", [2, 3, pickle.DEFAULT_PROTOCOL, 5])
@pytest.mark.parametrize("numpy1", [False, True])
def test_dataset_pickles_load(tmp_path, protocol, numpy1):
    position, yaw = _poses(protocol)
    data = {"position": position, "yaw": yaw, "speed": np.float64(1.5), "steps": np.int64(T), "empty": np.zeros(0)}
    raw = pickle.dumps(data, protocol=protocol)  # as pickle.dump(dict_of_arrays, f) writes it
    if numpy1:
        raw = _numpy1_names(raw)
        assert b"numpy._core" not in raw and b"numpy.core." in raw
        with warnings.catch_warnings():  # numpy.core.numeric (protocol 5) warns under NumPy 2
            warnings.simplefilter("ignore", DeprecationWarning)
            assert pickle.loads(raw)["speed"] == 1.5  # NumPy 2 still resolves the numpy.core names
    traj = read_trajectory(_folder_with_pickle(tmp_path, raw), load_images=False)
    np.testing.assert_array_equal(traj.position, position)
    np.testing.assert_array_equal(traj.yaw, yaw)
    loaded = recon._load_pickle(tmp_path / "traj")
    assert type(loaded["speed"]) is np.float64 and loaded["speed"] == 1.5 and loaded["steps"] == T
    assert loaded["empty"].shape == (0,)


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_lists_and_numpy_scalars_load(tmp_path, protocol):
    position, yaw = _poses(1)
    data = {
        "position": position.tolist(),  # list of [x, y] lists of floats
        "yaw": [np.float64(a) for a in yaw],  # list of NumPy scalars
        "meta": {"rate_hz": 4, "name": "run_0", "ok": True, "scale": 0.25, "pair": (1, 2)},
    }
    traj = read_trajectory(_folder_with_pickle(tmp_path, pickle.dumps(data, protocol=protocol)))
    np.testing.assert_array_equal(traj.position, position)
    np.testing.assert_array_equal(traj.yaw, yaw)
    assert traj.frames.shape == (T, 8, 8, 3)
    data = {"position": position.tolist(), "yaw": yaw.tolist()}  # plain floats
    traj = read_trajectory(_folder_with_pickle(tmp_path, pickle.dumps(data, protocol=protocol)), load_images=False)
    np.testing.assert_array_equal(traj.yaw, yaw)


def test_project_writer_round_trip(tmp_path):
    frames, position, yaw = make_fake_trajectory(tmp_path / "t0", T=6, H=16, seed=2)
    traj = read_trajectory(tmp_path / "t0")
    np.testing.assert_array_equal(traj.position, position)
    np.testing.assert_array_equal(traj.yaw, yaw)
    assert traj.frames.shape == frames.shape
