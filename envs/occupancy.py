"""Top-down occupancy map of a world: free-space sampling, shortest paths, drawing.

Built from the world's collision footprints, not from MuJoCo, so it is cheap.
Paths are shortest paths on an 8-connected grid whose edge costs grow near
obstacles, so that planned routes keep to the middle of corridors.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from envs.worlds import ROBOT_RADIUS, World

_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


class OccupancyMap:
    """Grid over the world's bounds; cell (r, c) covers y = ymin + r·res, x = xmin + c·res."""

    def __init__(self, world: World, resolution: float = 0.1, clearance: float = ROBOT_RADIUS + 0.15):
        self.world, self.res, self.clearance = world, resolution, clearance
        self.xmin, xmax, self.ymin, ymax = world.bounds
        self.shape = (int(math.ceil((ymax - self.ymin) / resolution)), int(math.ceil((xmax - self.xmin) / resolution)))
        self.occupied = np.zeros(self.shape, np.uint8)
        for f in world.footprints:
            self._fill(self.occupied, f, 1)
        self.occupied[[0, -1], :] = 1  # every world is walled in
        self.occupied[:, [0, -1]] = 1
        # (H, W) metres from each cell to the nearest obstacle
        self.dist = cv2.distanceTransform(1 - self.occupied, cv2.DIST_L2, 5) * resolution
        self.free = self.dist > clearance
        self._graphs: dict[bool, csr_matrix] = {}

    # ---------------------------------------------------------------- coordinates
    def to_cell(self, xy) -> tuple[int, int]:
        c = int(np.clip((xy[0] - self.xmin) / self.res, 0, self.shape[1] - 1))
        r = int(np.clip((xy[1] - self.ymin) / self.res, 0, self.shape[0] - 1))
        return r, c

    def to_xy(self, rc) -> np.ndarray:
        rc = np.asarray(rc, float)
        return np.stack([self.xmin + (rc[..., 1] + 0.5) * self.res, self.ymin + (rc[..., 0] + 0.5) * self.res], -1)

    def _px(self, x: float, y: float) -> tuple[int, int]:
        return int(round((x - self.xmin) / self.res)), int(round((y - self.ymin) / self.res))

    def _fill(self, img: np.ndarray, f, value) -> None:
        if f.kind == "circle":
            cv2.circle(img, self._px(f.x, f.y), max(1, int(round(f.a / self.res))), value, -1)
            return
        c, s = math.cos(f.yaw), math.sin(f.yaw)
        corners = [(f.x + c * u - s * v, f.y + s * u + c * v) for u, v in
                   ((f.a, f.b), (-f.a, f.b), (-f.a, -f.b), (f.a, -f.b))]
        cv2.fillConvexPoly(img, np.array([self._px(*p) for p in corners], np.int32), value)

    # ---------------------------------------------------------------- queries
    def is_free(self, xy) -> bool:
        return bool(self.free[self.to_cell(xy)])

    def clearance_at(self, xy) -> float:
        return float(self.dist[self.to_cell(xy)])

    def sample_free(self, rng: np.random.Generator, min_clearance: float | None = None) -> np.ndarray:
        """A random free point (x, y) with at least ``min_clearance`` metres to obstacles."""
        ok = self.dist > (min_clearance if min_clearance is not None else self.clearance)
        cells = np.argwhere(ok)
        if len(cells) == 0:
            raise RuntimeError(f"world {self.world.family}/{self.world.seed} has no free space")
        return self.to_xy(cells[rng.integers(len(cells))])

    def _graph(self, weighted: bool) -> csr_matrix:
        """8-connected free-cell graph; edge cost in metres, times a near-obstacle penalty when ``weighted``."""
        if weighted not in self._graphs:
            self._graphs[weighted] = self._build_graph(weighted)
        return self._graphs[weighted]

    def _build_graph(self, weighted: bool) -> csr_matrix:
        h, w = self.shape
        idx = np.arange(h * w).reshape(h, w)
        cost = 1.0 + 2.0 * np.clip(1.0 - (self.dist - self.clearance) / 0.6, 0.0, 1.0)  # (H, W) prefer the middle
        cost = cost if weighted else np.ones_like(cost)
        rows, cols, vals = [], [], []
        for dr, dc in _NEIGHBOURS:
            a = self.free[max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)]
            b = self.free[max(0, dr) : h + min(0, dr), max(0, dc) : w + min(0, dc)]
            ok = a & b
            ia = idx[max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)][ok]
            ib = idx[max(0, dr) : h + min(0, dr), max(0, dc) : w + min(0, dc)][ok]
            step = self.res * math.hypot(dr, dc)
            rows.append(ia)
            cols.append(ib)
            vals.append(step * 0.5 * (cost.ravel()[ia] + cost.ravel()[ib]))
        n = h * w
        return csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))

    def _nearest_free(self, xy) -> int:
        r, c = self.to_cell(xy)
        if not self.free[r, c]:
            cells = np.argwhere(self.free)
            r, c = cells[np.argmin(((cells - (r, c)) ** 2).sum(1))]
        return int(r * self.shape[1] + c)

    def distance_field(self, goal_xy) -> np.ndarray:
        """Shortest free-space distance in metres from every cell to ``goal_xy``; inf where unreachable. (H, W)."""
        d = dijkstra(self._graph(False), directed=False, indices=self._nearest_free(goal_xy))
        return d.reshape(self.shape)

    def goal_distance(self, goal_xy):
        """A function xy -> shortest free-space metres to ``goal_xy`` (the field is computed once)."""
        field = self.distance_field(goal_xy)
        return lambda xy: float(field[self.to_cell(xy)])

    def geodesic(self, a_xy, b_xy) -> float:
        """Length in metres of the planned path (inf if unreachable)."""
        path = self.path(a_xy, b_xy)
        return math.inf if path is None else float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum())

    def path(self, start_xy, goal_xy) -> np.ndarray | None:
        """Planned path (N, 2) from start to goal, shortest under the near-obstacle cost; None if unreachable."""
        s, g = self._nearest_free(start_xy), self._nearest_free(goal_xy)
        _, pred = dijkstra(self._graph(True), directed=False, indices=s, return_predecessors=True)
        if s != g and pred[g] < 0:
            return None
        cells = [g]
        while cells[-1] != s:
            cells.append(int(pred[cells[-1]]))
        rc = np.array(divmod(np.array(cells[::-1]), self.shape[1])).T  # (N, 2) rows, cols
        return self.to_xy(rc)

    # ---------------------------------------------------------------- drawing
    def draw(self, size: int = 256, path=None, robot=None, goal=None) -> np.ndarray:
        """Top-down RGB image (size, size, 3) uint8: obstacles, the path so far, the robot and the goal."""
        img = np.full(self.shape + (3,), 235, np.uint8)
        for f in self.world.footprints:
            self._fill(img, f, tuple(int(255 * v) for v in f.rgb))
        scale = size / max(self.shape)
        img = cv2.resize(img, (int(self.shape[1] * scale), int(self.shape[0] * scale)), interpolation=cv2.INTER_NEAREST)

        def px(p):
            return int((p[0] - self.xmin) / self.res * scale), int((p[1] - self.ymin) / self.res * scale)

        if path is not None and len(path) > 1:
            cv2.polylines(img, [np.array([px(p) for p in path], np.int32)], False, (40, 90, 220), 1, cv2.LINE_AA)
        if goal is not None:
            cv2.drawMarker(img, px(goal), (0, 170, 0), cv2.MARKER_STAR, max(6, size // 24), 2)
        if robot is not None:
            x, y, yaw = robot
            tip = px((x + 0.5 * math.cos(yaw), y + 0.5 * math.sin(yaw)))
            cv2.circle(img, px((x, y)), max(2, int(ROBOT_RADIUS / self.res * scale)), (220, 30, 30), -1)
            cv2.line(img, px((x, y)), tip, (120, 0, 0), 2)
        out = np.full((size, size, 3), 235, np.uint8)
        out[: img.shape[0], : img.shape[1]] = img
        return np.ascontiguousarray(out[::-1])  # north up
