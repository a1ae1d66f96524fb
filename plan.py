"""Plan a path to a goal image with a world model: ``python plan.py --goal img.png``.

Planning (the CEM planner over the world model, GNM/NoMaD baselines) arrives
with issue 6. Until then this checks the inputs, shows what the planner will
see, and prints the ground-truth motion when the goal is the shipped example.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

EXAMPLES = Path(__file__).resolve().parent / "examples"


def load_image(path: str, size: int = 64) -> np.ndarray:
    """RGB uint8 (size, size, 3); a user mistake raises ValueError with one line that says what to fix."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"goal/context image {path!r} does not exist; pass the path of a PNG or JPEG file")
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"cannot read {path!r} as an image (corrupt or not PNG/JPEG); re-export it as PNG")
    if img.ndim != 3 or img.shape[2] != 3:
        channels = 1 if img.ndim == 2 else img.shape[2]
        raise ValueError(f"{path!r} has {channels} channel(s); the world model needs RGB (3 channels)")
    from nav_come.data.recon import square_resize

    return square_resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), size)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--goal", required=True, help="goal image (PNG/JPEG, RGB)")
    p.add_argument("--context", nargs="+", help="context images, oldest first (default: the shipped example)")
    p.add_argument("--json", help="write the result as JSON here")
    args = p.parse_args(argv)
    try:
        goal = load_image(args.goal)
        context = [load_image(c) for c in (args.context or sorted(map(str, EXAMPLES.glob("context_*.png"))))]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"goal {goal.shape}, {len(context)} context frames of {context[0].shape}")
    print("The CEM planner over the world model is not built yet (issue 6); nothing is planned.")
    meta = EXAMPLES / "example.json"
    if args.context is None and meta.is_file():
        truth = json.loads(meta.read_text())["true_waypoints"]
        print("ground-truth waypoints of the shipped example (spacing units, x fwd, y left, yaw):")
        for k, w in enumerate(truth, 1):
            print(f"  {k}: {w[0]:+.2f} {w[1]:+.2f} {w[2]:+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
