"""Procedural worlds as MJCF, generated from an integer seed.

Two families:
- ``outdoor`` (RECON spirit): grass with dirt paths under a sky, trees, rocks,
  buildings and fences, inside a hedge.
- ``maze`` (Memory Maze spirit): a grid maze with loops, walls whose colours and
  patterns change from region to region, and distinct coloured landmarks.

All randomness comes from ``numpy.random.default_rng(seed)`` (PCG64, the same
stream on every platform), so a seed names the same world on any machine.
Every world also carries 2-D footprints of what the robot collides with, used
for occupancy maps, path planning and the top-down view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from envs import textures as tx

FAMILIES = ("outdoor", "maze")
ROBOT_RADIUS = 0.2  # m, Jackal-like footprint
CAMERA_HEIGHT = 0.5  # m
CAMERA_FOVY = 90.0  # deg; square images, so 90 deg horizontally too


@dataclass
class Footprint:
    """What the robot collides with, seen from above: a circle or an oriented box."""

    kind: str  # "circle" | "box"
    x: float
    y: float
    a: float  # radius, or half length along the box's own x
    b: float = 0.0  # half width along the box's own y
    yaw: float = 0.0
    rgb: tuple = (0.3, 0.3, 0.3)


@dataclass
class World:
    family: str
    seed: int
    xml: str
    assets: dict[str, bytes]
    bounds: tuple[float, float, float, float]  # xmin, xmax, ymin, ymax
    footprints: list[Footprint]
    landmarks: list[tuple[float, float]] = field(default_factory=list)  # places worth patrolling between


class _Mjcf:
    """Collects MJCF fragments; keeps the generators free of XML plumbing."""

    def __init__(self) -> None:
        self.assets: dict[str, bytes] = {}
        self.asset_xml: list[str] = []
        self.bodies: list[str] = []
        self.footprints: list[Footprint] = []

    def material(self, name: str, img: np.ndarray, repeat: tuple = (1, 1), uniform: bool = False) -> str:
        self.assets[f"{name}.png"] = tx.png(img)
        self.asset_xml.append(f'<texture name="{name}" type="2d" file="{name}.png"/>')
        self.asset_xml.append(
            f'<material name="{name}" texture="{name}" texrepeat="{repeat[0]:g} {repeat[1]:g}" '
            f'texuniform="{str(uniform).lower()}" specular="0" shininess="0"/>'
        )
        return name

    def geom(self, kind: str, pos, size, *, yaw: float = 0.0, material: str | None = None, rgba=None,
             collide: bool = True) -> None:
        look = f'material="{material}"' if material else 'rgba="{} {} {} 1"'.format(*np.round(rgba, 3))
        contact = 'contype="0" conaffinity="1"' if collide else 'contype="0" conaffinity="0"'
        self.bodies.append(
            f'<geom type="{kind}" pos="{pos[0]:.3f} {pos[1]:.3f} {pos[2]:.3f}" '
            f'size="{" ".join(f"{s:.3f}" for s in size)}" euler="0 0 {yaw:.4f}" {look} {contact}/>'
        )

    def box(self, x, y, z, hx, hy, hz, *, yaw=0.0, material=None, rgba=None, collide=True, rgb_map=None):
        self.geom("box", (x, y, z), (hx, hy, hz), yaw=yaw, material=material, rgba=rgba, collide=collide)
        if collide:
            self.footprints.append(Footprint("box", x, y, hx, hy, yaw, rgb_map or (0.45, 0.4, 0.35)))

    def xml(self, name: str, half_extent: float, ground: str, sky: tuple) -> str:
        return f"""<mujoco model="{name}">
  <compiler angle="radian"/>
  <option timestep="0.05"/>
  <statistic extent="1" center="0 0 0"/>  <!-- makes map/znear and map/zfar metres -->
  <visual>
    <quality offsamples="0" shadowsize="0"/>
    <global offwidth="512" offheight="512"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
    <map znear="0.05" zfar="60"/>
  </visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="{sky[0]:.3f} {sky[1]:.3f} {sky[2]:.3f}"
             rgb2="0.95 0.95 0.97" width="32" height="192"/>
    {chr(10).join("    " + a for a in self.asset_xml).strip()}
  </asset>
  <worldbody>
    <light directional="true" pos="0 0 10" dir="0.3 0.2 -1" diffuse="0.55 0.55 0.5" castshadow="false"/>
    <geom name="ground" type="plane" size="{half_extent + 20:.1f} {half_extent + 20:.1f} 0.1" material="{ground}"
          contype="0" conaffinity="0"/>
    {chr(10).join("    " + b for b in self.bodies).strip()}
    <body name="robot" pos="0 0 0">
      <joint name="x" type="slide" axis="1 0 0" damping="0"/>
      <joint name="y" type="slide" axis="0 1 0" damping="0"/>
      <joint name="yaw" type="hinge" axis="0 0 1" damping="0"/>
      <geom name="robot" type="cylinder" size="{ROBOT_RADIUS} 0.15" pos="0 0 0.2" rgba="0.15 0.15 0.15 1"
            contype="1" conaffinity="0" group="3"/>
      <camera name="front" pos="{ROBOT_RADIUS * 0.9:.2f} 0 {CAMERA_HEIGHT}" xyaxes="0 -1 0 0 0 1"
              fovy="{CAMERA_FOVY}"/>
    </body>
  </worldbody>
</mujoco>
"""


def generate_world(family: str, seed: int) -> World:
    """The world of ``family`` named by ``seed``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown world family {family!r}; choose one of {', '.join(FAMILIES)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"world seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng([int(seed), FAMILIES.index(family)])
    return _outdoor(rng, int(seed)) if family == "outdoor" else _maze(rng, int(seed))


# ----------------------------------------------------------------------------- outdoor


def _place(rng, placed: list, half: float, radius: float, clearance: float, tries: int = 60):
    """A centre at least ``clearance`` metres of free space away from everything placed."""
    for _ in range(tries):
        p = rng.uniform(-half + radius + 0.5, half - radius - 0.5, 2)
        if all(math.dist(p, q) > radius + r + clearance for q, r in placed):
            placed.append((p, radius))
            return p
    return None


def _tree(m: _Mjcf, rng, x: float, y: float) -> None:
    trunk_r, height = rng.uniform(0.08, 0.22), rng.uniform(1.2, 2.6)
    m.geom("cylinder", (x, y, height / 2), (trunk_r, height / 2), material="bark")
    m.footprints.append(Footprint("circle", x, y, trunk_r, rgb=(0.35, 0.22, 0.12)))
    leaf = tx.jitter(rng, (0.18, 0.45, 0.14), 0.1)
    if rng.random() < 0.5:  # broadleaf: one crown
        r = rng.uniform(0.7, 1.5)
        m.geom("ellipsoid", (x, y, height + 0.5 * r), (r, r, 0.8 * r), rgba=leaf, collide=False)
    else:  # conifer: stacked shrinking crowns
        r = rng.uniform(0.6, 1.1)
        for k in range(3):
            m.geom("ellipsoid", (x, y, height * 0.6 + 0.7 * k * r), (r * (1 - 0.28 * k),) * 2 + (0.55 * r,),
                   rgba=np.asarray(leaf) * 0.8, collide=False)


def _rock(m: _Mjcf, rng, x: float, y: float) -> None:
    a, b = rng.uniform(0.25, 0.8, 2)
    c = rng.uniform(0.2, 0.6)
    yaw = rng.uniform(0, math.pi)
    m.geom("ellipsoid", (x, y, 0.4 * c), (a, b, c), yaw=yaw, material=f"stone{rng.integers(2)}")
    m.footprints.append(Footprint("box", x, y, a * 0.85, b * 0.85, yaw, rgb=(0.5, 0.5, 0.5)))


def _building(m: _Mjcf, rng, x: float, y: float, hx: float, hy: float) -> None:
    yaw = rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.15)
    hz = rng.uniform(1.2, 2.5)
    m.box(x, y, hz, hx, hy, hz, yaw=yaw, material=f"wall{rng.integers(3)}", rgb_map=(0.6, 0.3, 0.25))
    roof = tx.jitter(rng, (0.35, 0.2, 0.18), 0.12)
    m.box(x, y, 2 * hz + 0.1, hx + 0.2, hy + 0.2, 0.1, yaw=yaw, rgba=roof, collide=False)
    door = (x + math.cos(yaw) * (hx + 0.01), y + math.sin(yaw) * (hx + 0.01))
    m.box(door[0], door[1], 0.6, 0.02, 0.35, 0.6, yaw=yaw, rgba=tx.jitter(rng, (0.3, 0.2, 0.1)), collide=False)


def _fence(m: _Mjcf, rng, x: float, y: float, half_len: float) -> None:
    yaw = rng.uniform(0, math.pi)
    wood = tx.jitter(rng, (0.55, 0.42, 0.3), 0.12)
    m.box(x, y, 0.3, half_len, 0.04, 0.06, yaw=yaw, rgba=wood, rgb_map=(0.55, 0.42, 0.3))
    m.box(x, y, 0.75, half_len, 0.04, 0.06, yaw=yaw, rgba=wood, collide=False)
    for s in np.arange(-half_len, half_len + 1e-6, 1.0):
        px, py = x + s * math.cos(yaw), y + s * math.sin(yaw)
        m.box(px, py, 0.5, 0.06, 0.06, 0.5, rgba=np.asarray(wood) * 0.8, collide=False)


def _dirt_paths(m: _Mjcf, rng, half: float, n: int) -> None:
    for _ in range(n):
        p = rng.uniform(-half, half, 2)
        for _ in range(rng.integers(2, 5)):
            q = np.clip(p + rng.normal(0, half / 2, 2), -half, half)
            mid, d = (p + q) / 2, q - p
            length = float(np.hypot(*d))
            if length > 0.5:
                m.geom("box", (mid[0], mid[1], 0.002), (length / 2 + 0.4, rng.uniform(0.5, 0.8), 0.002),
                       yaw=math.atan2(d[1], d[0]), material="dirt", collide=False)
            p = q


def _outdoor(rng: np.random.Generator, seed: int) -> World:
    half = float(rng.uniform(11.0, 14.0))
    m = _Mjcf()
    m.material("grass", tx.grass(rng), repeat=(0.5, 0.5), uniform=True)
    m.material("dirt", tx.dirt(rng), repeat=(0.7, 0.7), uniform=True)
    m.material("bark", tx.bark(rng), repeat=(1, 2))
    m.material("hedge", tx.stone(rng, tx.jitter(rng, (0.12, 0.3, 0.1))), repeat=(0.5, 0.5), uniform=True)
    for k in range(2):
        m.material(f"stone{k}", tx.stone(rng, tx.jitter(rng, (0.5, 0.48, 0.45), 0.12)))
    wall_colours = [(0.62, 0.3, 0.22), (0.8, 0.75, 0.62), (0.45, 0.5, 0.6)]
    for k, rgb in enumerate(wall_colours):
        m.material(f"wall{k}", tx.bricks(rng, tx.jitter(rng, rgb)), repeat=(0.6, 0.6), uniform=True)
    _dirt_paths(m, rng, half, int(rng.integers(2, 4)))
    for s in (-1, 1):  # hedge around the world
        m.box(s * (half + 0.3), 0, 0.9, 0.3, half + 0.6, 0.9, material="hedge", rgb_map=(0.1, 0.3, 0.1))
        m.box(0, s * (half + 0.3), 0.9, half + 0.6, 0.3, 0.9, material="hedge", rgb_map=(0.1, 0.3, 0.1))
    placed: list = []
    for _ in range(int(rng.integers(2, 5))):
        hx, hy = rng.uniform(1.0, 2.5, 2)
        p = _place(rng, placed, half, math.hypot(hx, hy), 2.0)
        if p is not None:
            _building(m, rng, p[0], p[1], hx, hy)
    for _ in range(int(rng.integers(2, 5))):
        half_len = rng.uniform(1.5, 3.5)
        p = _place(rng, placed, half, half_len, 1.4)
        if p is not None:
            _fence(m, rng, p[0], p[1], half_len)
    for _ in range(int(rng.integers(12, 20))):
        p = _place(rng, placed, half, 0.8, 1.2)
        if p is not None:
            _rock(m, rng, p[0], p[1])
    for _ in range(int(rng.integers(25, 40))):
        p = _place(rng, placed, half, 0.3, 1.2)
        if p is not None:
            _tree(m, rng, p[0], p[1])
    sky = tx.jitter(rng, (0.45, 0.65, 0.9), 0.06)
    xml = m.xml(f"outdoor_{seed}", half, "grass", sky)
    return World("outdoor", seed, xml, m.assets, (-half, half, -half, half), m.footprints)


# ----------------------------------------------------------------------------- maze

LANDMARK_COLOURS = [(0.9, 0.1, 0.1), (0.1, 0.75, 0.1), (0.1, 0.25, 0.95), (0.95, 0.85, 0.1),
                    (0.9, 0.1, 0.85), (0.1, 0.85, 0.9), (1.0, 0.5, 0.05), (0.95, 0.95, 0.95)]


def _maze_walls(rng, n: int, loop_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Randomised DFS maze on an n×n grid, then extra openings for loops.

    Returns (east, north) bool arrays of shape (n, n): a wall on that side of cell (i, j).
    """
    east, north = np.ones((n, n), bool), np.ones((n, n), bool)
    seen = np.zeros((n, n), bool)
    stack = [(0, 0)]
    seen[0, 0] = True
    while stack:
        i, j = stack[-1]
        nbrs = [(i + di, j + dj) for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))
                if 0 <= i + di < n and 0 <= j + dj < n and not seen[i + di, j + dj]]
        if not nbrs:
            stack.pop()
            continue
        a, b = nbrs[rng.integers(len(nbrs))]
        if a != i:
            east[min(i, a), j] = False
        else:
            north[i, min(j, b)] = False
        seen[a, b] = True
        stack.append((a, b))
    inner = rng.random((n, n)) < loop_frac
    east[:-1] &= ~inner[:-1]
    north[:, :-1] &= ~rng.permutation(inner.T).T[:, :-1]
    return east, north


def _maze(rng: np.random.Generator, seed: int) -> World:
    n, cell, wall_h, t = int(rng.integers(6, 9)), 2.0, 1.2, 0.06
    half = n * cell / 2
    m = _Mjcf()
    zones = 4  # quadrants with their own look
    palette = rng.permutation(len(LANDMARK_COLOURS))
    for z in range(zones):
        c1 = tx.jitter(rng, LANDMARK_COLOURS[palette[z]], 0.1)
        c2 = np.asarray(c1) * 0.45 + 0.35
        style = (z + int(rng.integers(3))) % 3
        img = (tx.bricks(rng, c1) if style == 0 else tx.stripes(rng, c1, c2, n=2 + z) if style == 1
               else tx.stone(rng, c1))
        m.material(f"wall{z}", img, repeat=(0.5, 0.5), uniform=True)
        m.material(f"floor{z}", tx.stone(rng, tx.jitter(rng, (0.55, 0.5, 0.45), 0.15)), repeat=(0.5, 0.5),
                   uniform=True)
    m.material("ground", tx.stone(rng, (0.4, 0.4, 0.4)), repeat=(0.5, 0.5), uniform=True)

    def zone(x: float, y: float) -> int:
        return int(x > 0) + 2 * int(y > 0)

    for s in (-1, 1):
        for q in (-1, 1):  # floor tiles per quadrant (visual only)
            m.geom("box", (s * half / 2, q * half / 2, 0.001), (half / 2, half / 2, 0.001),
                   material=f"floor{zone(s, q)}", collide=False)
    east, north = _maze_walls(rng, n, loop_frac=0.18)

    def wall(x: float, y: float, hx: float, hy: float) -> None:
        m.box(x, y, wall_h / 2, hx, hy, wall_h / 2, material=f"wall{zone(x, y)}", rgb_map=(0.5, 0.5, 0.55))

    for k in range(n):  # outer walls
        c = -half + (k + 0.5) * cell
        for s in (-1, 1):
            wall(s * half, c, t, cell / 2 + t)
            wall(c, s * half, cell / 2 + t, t)
    for i in range(n):
        for j in range(n):
            cx, cy = -half + (i + 0.5) * cell, -half + (j + 0.5) * cell
            if i < n - 1 and east[i, j]:
                wall(cx + cell / 2, cy, t, cell / 2 + t)
            if j < n - 1 and north[i, j]:
                wall(cx, cy + cell / 2, cell / 2 + t, t)
    landmarks = []
    cells = rng.permutation(n * n)[: int(rng.integers(6, 9))]
    for k, c in enumerate(cells):
        i, j = divmod(int(c), n)
        cx, cy = -half + (i + 0.5) * cell, -half + (j + 0.5) * cell
        ox, oy = rng.choice([-1, 1], 2) * (cell / 2 - 0.35)
        rgb = LANDMARK_COLOURS[palette[k % len(palette)]]
        shape = ("sphere", "box", "cylinder", "capsule")[k % 4]
        size = {"sphere": (0.25,), "box": (0.2, 0.2, 0.2), "cylinder": (0.2, 0.3), "capsule": (0.15, 0.2)}[shape]
        m.geom(shape, (cx + ox, cy + oy, 0.45), size, rgba=rgb)
        m.footprints.append(Footprint("circle", cx + ox, cy + oy, 0.28, rgb=rgb))
        landmarks.append((cx + ox * 0.4, cy + oy * 0.4))
    xml = m.xml(f"maze_{seed}", half, "ground", tx.jitter(rng, (0.5, 0.6, 0.75), 0.05))
    return World("maze", seed, xml, m.assets, (-half, half, -half, half), m.footprints, landmarks)
