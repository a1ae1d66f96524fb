"""RECON trajectory folders: the on-disk format of GNM/ViNT/NoMaD and NWM (docs/design.md §2).

A trajectory is a folder ``<dataset>/<traj_name>/`` holding ``0.jpg … (T-1).jpg`` (RGB
frames at 4 Hz) and ``traj_data.pkl``, a dict ``{"position": (T, 2) metres in a world
frame, "yaw": (T,) radians}``, x forward, y left, yaw counter-clockwise. A split is a
``traj_names.txt`` file with one trajectory folder name per line.

This project's simulator adds two optional keys that other loaders ignore:
``"commanded"`` (T, 3), the command given at each frame as the one-step motion it makes
with nothing in the way (dx, dy metres in the robot frame, dyaw radians; the last row is
zero), and ``"contact"`` (T,) bool, whether the step into that frame stopped at an
obstacle. Without them, the commanded motion is taken to be the motion that happened.

Readers check everything a loader of the field would trip over later and raise
:class:`DataFormatError` naming the file, the problem and the fix. ``traj_data.pkl`` is
unpickled with an allow-list of NumPy globals, so a pickle that would run code is refused
unexecuted. Writers are atomic.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nav_come.core.io import atomic_directory, atomic_write_text

TRAJ_DATA = "traj_data.pkl"
SPLIT_FILE = "traj_names.txt"
PICKLE_PROTOCOL = 4  # readable by every Python 3 the field's loaders run on
_FRAME_RE = re.compile(r"^(\d+)\.jpg$")


class DataFormatError(ValueError):
    """A dataset file or folder breaks the RECON format; the message says which and how to fix it."""


@dataclass
class Trajectory:
    """One trajectory. position: (T, 2) float64 metres; yaw: (T,) float64 radians;
    frames: (T, H, W, 3) uint8 RGB, or None when not loaded; path: its folder;
    commanded: (T, 3) float64 and contact: (T,) bool when recorded (module docstring), else None."""

    name: str
    position: np.ndarray
    yaw: np.ndarray
    frames: np.ndarray | None
    path: Path
    commanded: np.ndarray | None = None
    contact: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.yaw)


# ----------------------------------------------------------------------------- writing


class _PortablePickler(pickle.Pickler):
    """Pickles ndarrays as ``numpy.array(list, dtype)``: NumPy 2 pickles name the
    module ``numpy._core``, which the NumPy 1.x of the field's environments cannot import."""

    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            return np.array, (obj.tolist(), obj.dtype.str)
        return NotImplemented


def _pickle_bytes(obj) -> bytes:
    buf = io.BytesIO()
    _PortablePickler(buf, protocol=PICKLE_PROTOCOL).dump(obj)
    return buf.getvalue()


def _write_jpg(path: Path, rgb: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"JPEG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


def write_trajectory(
    folder: str | os.PathLike,
    frames: np.ndarray,
    position: np.ndarray,
    yaw: np.ndarray,
    quality: int = 95,
    commanded: np.ndarray | None = None,
    contact: np.ndarray | None = None,
) -> Path:
    """Write one trajectory folder atomically; an existing folder is replaced.

    frames: (T, H, W, 3) uint8 RGB; position: (T, 2) metres; yaw: (T,) radians;
    commanded (T, 3) and contact (T,): the optional keys of the module docstring.
    Everything is written to ``.<name>.tmp-<pid>`` next to ``folder`` and renamed into
    place at the end, so an interrupted write never leaves a folder that reads as valid.
    """
    frames, position, yaw = np.asarray(frames), np.asarray(position, np.float64), np.asarray(yaw, np.float64)
    T = len(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or T == 0:
        raise ValueError(f"frames must be uint8 of shape (T>0, H, W, 3), got {frames.dtype} {frames.shape}")
    if position.shape != (T, 2):
        raise ValueError(f"position must have shape (T, 2) = ({T}, 2), got {position.shape}")
    if yaw.shape != (T,):
        raise ValueError(f"yaw must have shape (T,) = ({T},), got {yaw.shape}")
    if not (np.isfinite(position).all() and np.isfinite(yaw).all()):
        raise ValueError("position and yaw must be finite (no NaN or inf)")
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in [0, 100], got {quality}")
    data = {"position": position, "yaw": yaw}
    if commanded is not None:
        data["commanded"] = np.asarray(commanded, np.float64)
        if data["commanded"].shape != (T, 3) or not np.isfinite(data["commanded"]).all():
            raise ValueError(f"commanded must be finite with shape (T, 3) = ({T}, 3), got {data['commanded'].shape}")
    if contact is not None:
        data["contact"] = np.asarray(contact, bool)
        if data["contact"].shape != (T,):
            raise ValueError(f"contact must have shape (T,) = ({T},), got {data['contact'].shape}")
    with atomic_directory(folder) as tmp:
        for k in range(T):
            _write_jpg(tmp / f"{k}.jpg", frames[k], quality)
        (tmp / TRAJ_DATA).write_bytes(_pickle_bytes(data))
    return Path(folder)


# ----------------------------------------------------------------------------- reading


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside :data:`_SAFE_GLOBALS`; ``args[0]`` names it, e.g. ``posix.system``."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it to store bytes; latin-1 text only."""
    if encoding not in ("latin1", "latin-1"):
        raise _RefusedGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args) -> bytes:
    """``bytes()`` as protocol-2 pickles use it to store ``b""``; no arguments allowed."""
    if args:
        raise _RefusedGlobal("builtins.bytes with arguments")
    return b""


def _safe_globals() -> dict[tuple[str, str], object]:
    """(module, name) → object for every global a plain pickle of ndarrays, dtypes and
    NumPy scalars names, under both NumPy 1.x (``numpy.core``) and 2.x (``numpy._core``)."""
    core = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
    multiarray, numeric = (importlib.import_module(f"{core}.{m}") for m in ("multiarray", "numeric"))
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("numpy", "array"): np.array}
    # numpy.array: our own writer (_PortablePickler) stores ndarrays as numpy.array(list, dtype)
    for prefix in ("numpy.core", "numpy._core"):
        allowed[f"{prefix}.multiarray", "_reconstruct"] = multiarray._reconstruct  # ndarray
        allowed[f"{prefix}.multiarray", "scalar"] = multiarray.scalar  # np.float64 etc.
        allowed[f"{prefix}.numeric", "_frombuffer"] = numeric._frombuffer  # ndarray, protocol 5
    allowed["_codecs", "encode"] = _latin1_encode  # bytes, protocol 2
    for builtins in ("builtins", "__builtin__"):
        allowed[builtins, "bytes"] = _empty_bytes  # b"", protocol 2
    return allowed


_SAFE_GLOBALS = _safe_globals()


class _PoseUnpickler(pickle.Unpickler):
    """Unpickles only plain data, ndarrays, dtypes and NumPy scalars: any other global
    (``os.system``, ``builtins.eval``, ``numpy.load`` …) raises before anything runs."""

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[module, name]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _load_pickle(folder: Path) -> dict:
    if not folder.is_dir():
        raise DataFormatError(
            f"trajectory folder {folder} does not exist: check the data directory and the split's traj_names.txt"
        )
    pkl = folder / TRAJ_DATA
    if not pkl.is_file():
        raise DataFormatError(
            f"{pkl} is missing: each trajectory folder needs {TRAJ_DATA} with 'position' (T,2) and 'yaw' (T,)"
        )
    try:
        with open(pkl, "rb") as f:
            data = _PoseUnpickler(f).load()
    except _RefusedGlobal as e:
        ref = e.args[0] if e.args[0].isprintable() else ascii(e.args[0])  # keep the message one line
        raise DataFormatError(
            f"{pkl} is not a plain RECON pose pickle: it refers to {ref}, so it was refused and not executed; "
            "re-create it as a dict of numpy arrays, e.g. with nav_come.core.data.write_trajectory"
        ) from None
    except Exception as e:  # any unpickling failure means the same thing to the user
        raise DataFormatError(
            f"{pkl} is corrupt and cannot be unpickled ({type(e).__name__}: {e}); re-create it with the "
            "dataset's processing script or nav_come.core.data.write_trajectory"
        ) from e
    if not isinstance(data, dict) or not {"position", "yaw"} <= data.keys():
        found = sorted(data.keys()) if isinstance(data, dict) else type(data).__name__
        raise DataFormatError(f"{pkl} must hold a dict with keys 'position' and 'yaw', found {found}")
    return data


def _as_float_array(pkl: Path, data: dict, key: str) -> np.ndarray:
    try:
        return np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataFormatError(f"{pkl}: '{key}' is not a numeric array ({e})") from e


def _check_poses(pkl: Path, position: np.ndarray, yaw: np.ndarray) -> None:
    if position.ndim != 2 or position.shape[1] != 2 or len(position) == 0:
        raise DataFormatError(f"{pkl}: position has shape {position.shape}; the RECON format needs shape (T, 2)")
    T = len(position)
    if yaw.shape == (T, 1):
        raise DataFormatError(f"{pkl}: yaw has shape (T,1); the RECON format needs shape (T,) — squeeze it")
    if yaw.ndim == 1 and len(yaw) != T:
        raise DataFormatError(f"{pkl}: position has {T} steps but yaw has {len(yaw)}; the RECON format needs "
                              "one position and one yaw per frame")  # fmt: skip
    if yaw.shape != (T,):
        raise DataFormatError(f"{pkl}: yaw has shape {yaw.shape}; the RECON format needs shape (T,) = ({T},)")
    for key, arr in (("position", position), ("yaw", yaw)):
        bad = ~np.isfinite(arr.reshape(T, -1)).all(-1)
        if bad.any():
            raise DataFormatError(
                f"{pkl}: {key} has NaN or inf at {int(bad.sum())} step(s), first at step {int(np.argmax(bad))}; "
                "drop or interpolate those steps"
            )


def _check_frame_files(folder: Path, T: int) -> None:
    numbers = {int(m.group(1)) for m in map(_FRAME_RE.match, os.listdir(folder)) if m}
    if len(numbers) != T:
        raise DataFormatError(
            f"{folder}: {len(numbers)} jpg frames but {TRAJ_DATA} has {T} poses; "
            "every pose k needs exactly one frame k.jpg"
        )
    missing = sorted(set(range(T)) - numbers)
    if missing:
        raise DataFormatError(f"{folder}: missing frame {missing[0]}.jpg (frames must be numbered 0..{T - 1})")


def read_trajectory(folder: str | os.PathLike, load_images: bool = True, image_size: int | None = None) -> Trajectory:
    """Read and validate one RECON trajectory folder.

    image_size: None keeps the stored frames; an int center-crops each frame to a
    square and resizes it to (image_size, image_size) with ``cv2.INTER_AREA``.
    Raises DataFormatError for anything the format does not allow.
    """
    folder = Path(folder)
    data = _load_pickle(folder)
    pkl = folder / TRAJ_DATA
    position, yaw = _as_float_array(pkl, data, "position"), _as_float_array(pkl, data, "yaw")
    _check_poses(pkl, position, yaw)
    _check_frame_files(folder, len(yaw))
    commanded, contact = _optional_keys(pkl, data, len(yaw))
    frames = load_frames(folder, range(len(yaw)), image_size) if load_images else None
    return Trajectory(folder.name, position, yaw, frames, folder, commanded, contact)


def _optional_keys(pkl: Path, data: dict, T: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The simulator's optional ``commanded`` (T, 3) and ``contact`` (T,), checked; None where absent."""
    commanded = _as_float_array(pkl, data, "commanded") if "commanded" in data else None
    if commanded is not None and (commanded.shape != (T, 3) or not np.isfinite(commanded).all()):
        raise DataFormatError(f"{pkl}: 'commanded' must be finite with shape (T, 3) = ({T}, 3), got "
                              f"{commanded.shape}; fix or drop the key")  # fmt: skip
    contact = np.asarray(data["contact"]) if "contact" in data else None
    if contact is not None and (contact.shape != (T,) or not np.isin(contact, (0, 1)).all()):
        raise DataFormatError(f"{pkl}: 'contact' must be booleans with shape (T,) = ({T},), got "
                              f"{contact.shape}; fix or drop the key")  # fmt: skip
    return commanded, None if contact is None else contact.astype(bool)


def square_resize(img: np.ndarray, size: int) -> np.ndarray:
    """Center-crop (H, W, 3) to a square, then resize to (size, size, 3) with INTER_AREA."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = img[top : top + s, left : left + s]
    if s != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img


def _read_jpg(path: Path) -> np.ndarray:
    try:
        buf = np.frombuffer(path.read_bytes(), np.uint8)
    except FileNotFoundError as e:
        raise DataFormatError(f"{path} is missing: every pose k needs a frame k.jpg") from e
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if bgr is None:
        raise DataFormatError(f"{path} is not a readable JPEG image (corrupt or empty); re-extract this frame")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_frames(folder: str | os.PathLike, indices: Sequence[int], image_size: int | None = None) -> np.ndarray:
    """Decode frames ``indices`` of a trajectory folder. Returns (len(indices), H, W, 3) uint8 RGB.

    image_size: see :func:`read_trajectory`. Without it all frames must share one size.
    """
    folder = Path(folder)
    out = []
    for k in indices:
        img = _read_jpg(folder / f"{int(k)}.jpg")
        if image_size is not None:
            img = square_resize(img, image_size)
        elif out and img.shape != out[0].shape:
            raise DataFormatError(
                f"{folder / f'{int(k)}.jpg'} has size {img.shape[:2]} but other frames have {out[0].shape[:2]}; "
                "pass image_size to resize all frames"
            )
        out.append(img)
    if not out:
        raise ValueError(f"no frame indices given for {folder}")
    return np.stack(out)  # (N, H, W, 3)


# ----------------------------------------------------------------------------- splits


def read_split(path: str | os.PathLike) -> list[str]:
    """Trajectory names of a ``traj_names.txt`` split file (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(
            f"split file {path} does not exist. Our simulator writes DIR/splits/<split>/{SPLIT_FILE}; "
            f"the field's layout is <split_dir>/<dataset>/<split>/{SPLIT_FILE} (pass split_dir and dataset)"
        )
    names = [line.strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DataFormatError(f"split file {path} lists no trajectories; write one folder name per line")
    return names


def write_split(path: str | os.PathLike, names: Sequence[str]) -> Path:
    """Write a ``traj_names.txt`` split file atomically, one name per line."""
    names = list(names)
    bad = [n for n in names if not isinstance(n, str) or not n.strip() or "\n" in n or n != n.strip()]
    if bad:
        raise ValueError(f"trajectory names must be non-empty single-line strings without surrounding space: {bad}")
    return atomic_write_text(path, "".join(f"{n}\n" for n in names))


def split_path(
    data_dir: str | os.PathLike,
    split: str,
    split_dir: str | os.PathLike | None = None,
    dataset: str | None = None,
) -> Path:
    """Path of a split's ``traj_names.txt``.

    - simulator layout (split_dir None): ``data_dir/splits/<split>/traj_names.txt``;
    - field layout: ``<split_dir>/<dataset>/<split>/traj_names.txt``;
    - split_dir without dataset: ``<split_dir>/<split>/traj_names.txt``.
    """
    if not split or os.sep in split or "/" in split:
        raise ValueError(f"split must be a plain name such as 'train' or 'test', got {split!r}")
    if split_dir is None:
        return Path(data_dir) / "splits" / split / SPLIT_FILE
    root = Path(split_dir) if dataset is None else Path(split_dir) / dataset
    return root / split / SPLIT_FILE


def data_fingerprint(data_dir: str | os.PathLike, split_file: str | os.PathLike) -> str:
    """Short content hash of a split: its name list, and each trajectory's pose file and frame
    count. Results kept for resuming record it, so that regenerated data is never mixed with them."""
    h = hashlib.sha256(Path(split_file).read_bytes())
    for name in read_split(split_file):
        folder = Path(data_dir) / name
        pkl = folder / TRAJ_DATA
        h.update(pkl.read_bytes() if pkl.is_file() else b"missing")
        h.update(str(sum(1 for _ in folder.glob("*.jpg"))).encode())
    return h.hexdigest()[:16]
