"""The one place that knows how a checkpoint folder is laid out, and how to make each part.

A dataset's checkpoints live in one folder, the world model with every expert, policy and
head beside it (``checkpoints/maze`` and ``checkpoints/outdoor`` are the shipped ones, one per
simulator world; :func:`pick_checkpoint` chooses the one that matches a dataset)::

    <root>/ae/  <root>/base/           the world model: autoencoder and base expert (nav_come.train)
    <root>/stm/ <root>/sltm/           trained memory experts (nav_come.train_expert)
    <root>/ssm/ <root>/full/           the memory baselines (the memory table only)
    <root>/ltm/                        optional: the LTM's settings (it has no offline weights)
    <root>/gnm/ <root>/nomad/          the policies (planners.train_policy)
    <root>/pose/ <root>/collision/     planning heads (planners.pose_distance, planners.collision,
    <root>/progress/                   planners.progress)
    <root>/student/                    CoME distilled into one network (planners.student)
    <root>/distilled/<k>step/<part>/   networks distilled for k DDIM steps (nav_come.distill)

Every part is a :mod:`nav_come.core.checkpoint` folder (``model.safetensors`` + ``config.json``).
:meth:`CheckpointLayout.need` returns a part's folder, or raises :class:`MissingCheckpoint`
with the command that trains it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

AE_DIR, BASE_DIR, LTM_DIR, DISTILLED_DIR = "ae", "base", "ltm", "distilled"
EXPERTS = ("stm", "sltm", "ssm", "full")  # trained offline; the LTM is trained at test time
POLICIES = ("gnm", "nomad")
LABELS = {"ae": "autoencoder", "base": "world model", "stm": "STM expert", "sltm": "SLTM expert",
          "ssm": "SSM baseline", "full": "Full baseline", "gnm": "GNM", "nomad": "NoMaD",
          "pose": "pose head (the pose distance's)", "collision": "collision head",
          "progress": "goal-progress head", "student": "CoME student"}  # fmt: skip


SHIPPED_ROOT = Path(__file__).resolve().parents[2] / "checkpoints"
WORLDS = ("maze", "outdoor")  # the simulator's world families, each with its shipped checkpoint folder


class MissingCheckpoint(RuntimeError):
    """A part whose checkpoint folder is not there; the message says how to make it."""


def train_command(root: str | os.PathLike, part: str, steps: int | None = None,
                  distilled: str | os.PathLike | None = None) -> str:  # fmt: skip
    """The command that writes ``part`` into ``root`` (DATA: the dataset folder); with ``steps``,
    its version distilled for that many DDIM steps into ``distilled`` (default ``root/distilled``)."""
    root = Path(root)
    if steps is not None:
        out = Path(distilled) if distilled is not None else root / DISTILLED_DIR
        return f"python -m nav_come.distill --expert {part} --ckpt {root} --data DATA --out {out}"
    if part in (AE_DIR, BASE_DIR):
        return f"python -m nav_come.train --data DATA --out {root}"
    if part in EXPERTS:
        return f"python -m nav_come.train_expert --expert {part} --base {root} --data DATA --out {root}"
    if part in POLICIES:
        return f"python -m planners.train_policy --policy {part} --data DATA --out {root / part}"
    if part == "pose":
        return f"python -m planners.pose_distance --data DATA --ckpt {root} --out {root / part}"
    if part == "progress":
        return f"python -m planners.progress --data DATA --ckpt {root} --out {root / part}"
    if part == "student":
        return f"python -m planners.student --ckpt {root} --data DATA --out {root}"
    if part == "collision":
        return f"python -m planners.collision --data DATA --ckpt {root} --out {root / part}"
    raise ValueError(f"unknown checkpoint part {part!r}")


class CheckpointLayout:
    """The parts of one checkpoint folder; see the module docstring. ``distilled``: the folder of
    the distilled networks when not ``root/distilled``."""

    def __init__(self, root: str | os.PathLike, distilled: str | os.PathLike | None = None):
        self.root = Path(root)
        self.distilled_root = Path(distilled) if distilled is not None else self.root / DISTILLED_DIR

    def __repr__(self) -> str:
        return f"CheckpointLayout({str(self.root)!r})"

    def folder(self, part: str, steps: int | None = None) -> Path:
        """Where ``part`` lives (``steps``: its version distilled for that many DDIM steps)."""
        if steps is not None:
            return self.distilled(steps) / part
        return self.root / part

    def distilled(self, steps: int) -> Path:
        """The folder of the networks distilled for ``steps`` DDIM steps."""
        return self.distilled_root / f"{steps}step"

    def has(self, part: str, steps: int | None = None) -> bool:
        return self.folder(part, steps).is_dir()

    def need(self, part: str, what: str | None = None, steps: int | None = None) -> Path:
        """``part``'s folder; MissingCheckpoint naming it (``what``, default its label) and the fix when missing."""
        folder = self.folder(part, steps)
        if not folder.is_dir():
            what = what or (f"{steps}-step distilled {part}" if steps is not None else LABELS.get(part, part))
            raise MissingCheckpoint(f"{what} checkpoint {folder} is missing; train it with "
                                    f"`{train_command(self.root, part, steps, self.distilled_root)}`")  # fmt: skip
        return folder


OPT_IN = ("progress", "student")  # parts read only when a run turns them on; such a run records their hash itself


def checkpoints_fingerprint(root: str | os.PathLike) -> str:
    """Short content hash of every checkpoint part in ``root`` (distilled ones included) but the
    opt-in ones (:data:`OPT_IN`): what a kept result depends on, so that retrained weights are never
    mixed with results of the old ones."""
    import hashlib

    from nav_come.core.checkpoint import checkpoint_hash

    h = hashlib.sha256()
    for config in sorted(Path(root).rglob("config.json")):
        part = config.parent
        if part.relative_to(root).parts[0] in OPT_IN:
            continue
        if (part / "model.safetensors").is_file():
            h.update(f"{part.relative_to(root)}:{checkpoint_hash(part)}".encode())
        else:  # settings alone (the LTM's)
            h.update(f"{part.relative_to(root)}:".encode() + config.read_bytes())
    return h.hexdigest()[:16]


def shipped_checkpoint(world: str = "maze") -> Path:
    """The shipped checkpoint folder of a simulator world (``checkpoints/<world>``)."""
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; choose one of {', '.join(WORLDS)}")
    return SHIPPED_ROOT / world


def _json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def data_world(data: str | os.PathLike | None) -> str | None:
    """The world family a dataset folder's ``dataset.json`` names (None: not a simulator dataset)."""
    world = _json(Path(data) / "dataset.json").get("world") if data is not None else None
    return world if isinstance(world, str) else None


def checkpoint_world(root: str | os.PathLike) -> str | None:
    """The world a checkpoint folder was trained on: the world its autoencoder's training data
    names, else the shipped folder's name; None when unknown (e.g. real RECON data)."""
    root = Path(root)
    meta = _json(root / AE_DIR / "config.json").get("metadata") or {}
    world = meta.get("world") or (data_world(meta["data"]) if isinstance(meta.get("data"), str) else None)
    if world is None and root.resolve().parent == SHIPPED_ROOT.resolve() and root.name in WORLDS:
        world = root.name
    return world if isinstance(world, str) else None


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def pick_checkpoint(ckpt: str | os.PathLike | None, data: str | os.PathLike | None = None,
                    world: str | None = None) -> Path:  # fmt: skip
    """The checkpoint folder a CLI uses: ``ckpt`` when given, else the shipped one of ``world``,
    else of the world ``data`` names, else the maze one. Prints one warning line when the
    checkpoint was trained on another world than the data (or ``world``) holds."""
    wanted = world or data_world(data)
    if ckpt is None:
        return shipped_checkpoint(wanted if wanted in WORLDS else "maze")
    ckpt, trained = Path(ckpt), checkpoint_world(ckpt)
    if wanted is not None and trained is not None and wanted != trained:
        fix = f"--ckpt {_shown(shipped_checkpoint(wanted))}" if wanted in WORLDS else "a checkpoint trained on them"
        print(
            f"warning: {ckpt} was trained on {trained} worlds, but the data holds {wanted} worlds; use {fix}",
            file=sys.stderr,
        )
    return ckpt
