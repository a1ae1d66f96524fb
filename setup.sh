#!/usr/bin/env bash
# One-shot set-up on a fresh Debian/Ubuntu machine: Mesa for headless MuJoCo
# rendering, then a virtual environment with the pinned requirements and the
# package itself (editable). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
if ! dpkg -s libegl-mesa0 libgl1-mesa-dri libosmesa6 >/dev/null 2>&1; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libegl-mesa0 libgl1-mesa-dri libosmesa6 >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0            # the CPU wheel first, so nothing pulls a CUDA build
.venv/bin/pip install -q -r requirements.txt
.venv/bin/pip install -q --no-deps -e .
