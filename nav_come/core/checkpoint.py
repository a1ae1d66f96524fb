"""Checkpoints: safetensors weights plus a JSON config, so loading needs nothing else.

A checkpoint is a folder::

    <dir>/model.safetensors   weights (safetensors.torch.save_model: handles shared tensors)
    <dir>/config.json         {"format": 1, "kind": "ae"|"dit"|..., "config": {dataclass fields},
                               "metadata": {steps, data, wall time, ...}}

Folders are written atomically (built in a hidden sibling, then renamed into place), so a
reader never sees weights and config from two different saves. Every load problem raises
:class:`CheckpointError` with a one-line message that names the file and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from nav_come.core.io import atomic_directory, atomic_write_text

# The world model shipped with the repository (``WorldModel.from_pretrained`` folder).
SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "maze"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_VERSION = 1

# kind -> (config dataclass, model class built from it); every network module registers its own
# (importing ``nav_come`` registers the autoencoder "ae" and the denoiser "dit").
MODEL_KINDS: dict[str, tuple[type, type[nn.Module]]] = {}
PRESETS: dict[str, dict] = {}  # kind -> its named presets, when a checkpoint's "preset" must be one of them


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not fit; the message says which and the fix.

    The message is always one line (causes quoted from other libraries are flattened).
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def register_kind(kind: str, config_cls: type, model_cls: type[nn.Module], presets: dict | None = None) -> None:
    """Make ``kind`` loadable: ``model_cls(config_cls(**fields))`` rebuilds the network; ``presets``:
    the named presets a checkpoint's ``preset`` field must come from ("custom" is always allowed)."""
    MODEL_KINDS[kind] = (config_cls, model_cls)
    if presets is not None:
        PRESETS[kind] = presets


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, kind: str, metadata: dict | None = None) -> Path:
    """Write ``model`` (which has a dataclass ``.config``) to ``directory`` atomically."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}: known {sorted(MODEL_KINDS)}")
    header = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "config": dataclasses.asdict(model.config),
        "metadata": metadata or {},
    }
    with atomic_directory(directory) as tmp:
        save_model(model, str(tmp / WEIGHTS))
        atomic_write_text(tmp / CONFIG, json.dumps(header, indent=2) + "\n")
    return Path(directory)


def save_checkpoint_files(
    directory: str | os.PathLike, model: nn.Module, kind: str, metadata: dict | None = None
) -> Path:
    """Like :func:`save_checkpoint`, but keeps the other files in ``directory`` (e.g. a training
    run's ``last/``): the two files are staged beside it and each is replaced atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".save-") as tmp:
        staged = save_checkpoint(Path(tmp) / "ckpt", model, kind, metadata)
        for name in (WEIGHTS, CONFIG):  # weights first: a reader never pairs a new config with old weights
            os.replace(staged / name, directory / name)
    return directory


def _read_header(directory: Path) -> dict:
    if not directory.is_dir():
        raise CheckpointError(
            f"checkpoint folder {directory} does not exist: pass the folder that holds {CONFIG} and {WEIGHTS}, "
            "or train one with `python -m nav_come.train --data DIR --out DIR`"
        )
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise CheckpointError(
                f"checkpoint folder {directory} has no {name}: it is incomplete; re-copy it or re-run training"
            )
    try:
        header = json.loads((directory / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{directory / CONFIG} is not valid JSON ({e}); re-copy the checkpoint") from e
    if not isinstance(header, dict) or not {"kind", "config"} <= header.keys():
        raise CheckpointError(f"{directory / CONFIG} lacks 'kind' and 'config': not a nav_come checkpoint")
    return header


def read_config(directory: str | os.PathLike, kind: str | None = None) -> tuple[str, Any, dict]:
    """(kind, typed config, metadata) of a checkpoint folder, checked against ``kind`` if given."""
    directory = Path(directory)
    header = _read_header(directory)
    found = header["kind"]
    if kind is not None and found != kind:
        raise CheckpointError(
            f"{directory} holds a '{found}' checkpoint but a '{kind}' checkpoint is needed here: "
            f"point to the '{kind}' folder instead"
        )
    if found not in MODEL_KINDS:
        raise CheckpointError(f"{directory}: unknown checkpoint kind '{found}' (known: {sorted(MODEL_KINDS)})")
    config_cls = MODEL_KINDS[found][0]
    fields = header["config"]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise CheckpointError(
            f"{directory / CONFIG}: unknown {config_cls.__name__} fields {unknown}; "
            "the checkpoint comes from a newer nav_come: upgrade the package"
        )
    preset = fields.get("preset")
    presets = PRESETS.get(found)
    if presets is not None and preset is not None and preset != "custom" and preset not in presets:
        raise CheckpointError(
            f"{directory / CONFIG}: unknown preset '{preset}' (known: {', '.join(presets)}); "
            'upgrade nav_come or set "preset": "custom"'
        )
    try:
        config = config_cls(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / CONFIG}: invalid config ({e}); fix the value or re-export") from e
    return found, config, header.get("metadata") or {}


def _check_shapes(path: Path, model: nn.Module) -> None:
    """Compare stored tensor shapes with the model's before loading (names the bad tensor)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a bad file; all mean "corrupt"
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({e}); re-copy it or re-train") from e
    for name, shape in stored.items():
        if name in expected and expected[name] != shape:
            raise CheckpointError(
                f"{path}: tensor '{name}' has shape {shape} but {CONFIG} builds {expected[name]}; "
                "weights and config do not belong together: re-export the checkpoint"
            )


def load_weights(model: nn.Module, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
    """Load a safetensors file into ``model`` strictly, with CheckpointError on any mismatch."""
    path = Path(path)
    _check_shapes(path, model)
    try:
        load_model(model, str(path), strict=True, device=str(device))
    except Exception as e:
        raise CheckpointError(f"{path} does not fit the model ({e}); re-export the checkpoint") from e


def load_checkpoint(
    directory: str | os.PathLike, kind: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint folder from its config and load its weights."""
    found, config, metadata = read_config(directory, kind)
    model = MODEL_KINDS[found][1](config)
    load_weights(model, Path(directory) / WEIGHTS, device)
    return model.to(device), metadata


def checkpoint_hash(directory: str | os.PathLike) -> str:
    """Short content hash (weights + config) of a checkpoint folder, for cache keys."""
    directory = Path(directory)
    _read_header(directory)
    h = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        with open(directory / name, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
