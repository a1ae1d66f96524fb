"""Headless OpenGL backend choice for MuJoCo: EGL first, then OSMesa.

MuJoCo and PyOpenGL fix their backend when they are first imported, so the
choice is made once per process tree, before ``import mujoco``: a short probe
in a subprocess tries each backend, and the winner is exported in
``MUJOCO_GL``/``PYOPENGL_PLATFORM`` so that worker processes inherit it.
"""

from __future__ import annotations

import os
import subprocess
import sys

BACKENDS = ("egl", "osmesa")
APT_HINT = "apt-get install -y libegl-mesa0 libgl1-mesa-dri libosmesa6"

_PROBE = """
import mujoco
ctx = mujoco.GLContext(16, 16)
ctx.make_current()
ctx.free()
"""


class RenderingUnavailable(RuntimeError):
    """No headless OpenGL backend works on this machine."""


def _probe(backend: str) -> bool:
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def select_backend() -> str:
    """Export a working ``MUJOCO_GL`` backend and return its name.

    A backend the user already set is trusted. Raises RenderingUnavailable
    naming the apt packages when neither EGL nor OSMesa works.
    """
    chosen = os.environ.get("MUJOCO_GL", "").lower()
    if chosen:
        os.environ.setdefault("PYOPENGL_PLATFORM", chosen if chosen in BACKENDS else "")
        return chosen
    for backend in BACKENDS:
        if _probe(backend):
            os.environ["MUJOCO_GL"] = backend
            os.environ["PYOPENGL_PLATFORM"] = backend
            return backend
    raise RenderingUnavailable(
        f"no headless OpenGL backend works (tried {', '.join(BACKENDS)}); install Mesa with `{APT_HINT}` "
        "or set MUJOCO_GL to a backend that works"
    )
