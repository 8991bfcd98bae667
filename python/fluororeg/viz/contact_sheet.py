"""Contact sheets: grids of images with their landmarks (one implementation for the package).

* :func:`image_grid`: tiles in a grid, each framed by a black border.
* :func:`dataset_contact_sheet`: samples of an artificial dataset with their visible landmarks
  and bone-mask outlines (``fluororeg contact-sheet``).
* :func:`subject_check_sheet`: front and side DRRs of a subject with its landmarks
  (``fluororeg subject check``).

Landmark colours follow :func:`fluororeg.subject.sides.landmark_sides`: blue left, red right,
green midline (:data:`SIDE_RGB`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["SIDE_RGB", "MASK_OUTLINE_RGB", "image_grid", "dataset_contact_sheet", "subject_check_sheet"]

SIDE_RGB = {"left": (80, 160, 255), "right": (255, 80, 80), "midline": (80, 255, 80)}
MASK_OUTLINE_RGB = (255, 220, 0)


def image_grid(tiles: Sequence[np.ndarray], columns: int = 8, border: int = 1) -> np.ndarray:
    """Tiles ([h, w] grey or [h, w, 3] RGB uint8, all one shape) in rows of ``columns``, each framed
    by ``border`` black pixels: [rows (h + 2 border), columns (w + 2 border)(, 3)] uint8."""
    tiles = [np.asarray(t) for t in tiles]
    if not tiles:
        raise ValueError("a contact sheet needs at least one image")
    h, w = tiles[0].shape[:2]
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    H, W = h + 2 * border, w + 2 * border
    sheet = np.zeros((rows * H, columns * W) + tiles[0].shape[2:], dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * H + border:r * H + border + h, c * W + border:c * W + border + w] = tile
    return sheet


def _draw_landmarks(img, xy, sides, scale: float, radius: float, *, filled: bool, shown=None) -> None:
    """Circles at pixel positions ``xy`` [L, 2] of an image enlarged ``scale`` times, coloured by side."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    for i, ((x, y), side) in enumerate(zip(xy, sides)):
        if shown is not None and not shown[i]:
            continue
        X, Y = scale * (x + 0.5) - 0.5, scale * (y + 0.5) - 0.5  # pixel centres of the enlarged image
        box = [X - radius, Y - radius, X + radius, Y + radius]
        if filled:
            draw.ellipse(box, fill=SIDE_RGB[side])
        else:
            draw.ellipse(box, outline=SIDE_RGB[side], width=2)


def _save(image: np.ndarray, path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def dataset_contact_sheet(reader, path, n: int = 64, columns: int = 8, seed: int | None = None) -> Path:
    """A PNG grid of the first (or ``seed``-random) ``n`` samples of a dataset split (a
    :class:`fluororeg.dataset.generate.DatasetReader`) with their visible landmarks and the
    bone-mask outline (yellow); "seg" marks bone-segmented samples."""
    from PIL import Image, ImageDraw
    from scipy.ndimage import binary_erosion

    from fluororeg.subject.sides import landmark_sides

    n = min(n, len(reader))
    if n < 1:
        raise ValueError("the dataset split is empty")
    idx = range(n) if seed is None else np.random.default_rng(seed).choice(len(reader), n, replace=False)
    sides = landmark_sides(reader.landmark_names, reader.meta.get("pairs", []))
    tiles = []
    for i in idx:
        s = reader[int(i)]
        rgb = np.repeat(s["image"][..., None], 3, axis=2)
        edge = s["mask"].astype(bool) & ~binary_erosion(s["mask"].astype(bool))
        rgb[edge] = MASK_OUTLINE_RGB
        img = Image.fromarray(rgb).resize((2 * rgb.shape[1], 2 * rgb.shape[0]), Image.NEAREST)
        _draw_landmarks(img, s["landmarks_px"], sides, 2, 2.5, filled=True, shown=s["visible"])
        if s["segmented"]:
            ImageDraw.Draw(img).text((3, 2), "seg", fill=MASK_OUTLINE_RGB)
        tiles.append(np.asarray(img))
    return _save(image_grid(tiles, columns), path)


def subject_check_sheet(subject, path, size: int = 256) -> Path:
    """A PNG of two parallel-beam DRRs of ``subject`` (front and side, in the dataset's base
    orientation) with its landmarks, each DRR enlarged twice: [2 size, 4 size, 3]."""
    from PIL import Image

    from fluororeg.core import render
    from fluororeg.core.geometry import ParallelCamera, euler_from_matrix
    from fluororeg.dataset.generate import PoseRanges
    from fluororeg.subject.sides import landmark_sides

    lm = subject.landmarks_model
    front = PoseRanges().for_subject(subject).base_rotation()  # the anatomical axes the dataset uses
    side = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]) @ front  # 90 deg about image y
    poses = np.zeros((2, 6))
    poses[:, :3] = euler_from_matrix(np.stack([front, side]))
    extent = float(np.max(np.abs(lm))) * 2.6
    camera = ParallelCamera(size, size, max(extent / size, 0.5))
    drr = render.render_parallel(subject.attenuation_model(), poses, camera)
    xy, _ = render.project_parallel(lm, poses, camera)
    sides = landmark_sides(subject.landmark_names, subject.pairs)
    tiles = []
    for k in range(2):
        img = Image.fromarray(render.to_uint8(drr[k])).convert("RGB").resize((2 * size, 2 * size))
        _draw_landmarks(img, xy[k], sides, 2, 4, filled=False)
        tiles.append(np.asarray(img))
    return _save(image_grid(tiles, columns=2, border=0), path)
