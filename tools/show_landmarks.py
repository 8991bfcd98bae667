"""Check a subject's landmarks by eye: DRRs (frontal, lateral, oblique) with the projected
landmarks drawn and labelled, and a CT slice crop around each landmark.

    python tools/show_landmarks.py --landmarks python/fluororeg/data/cranium/landmarks.mrk.json --out out/landmarks
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from fluororeg.core import render as R  # noqa: E402
from fluororeg.subject.example import cranium_volume  # noqa: E402
from fluororeg.core.geometry import ParallelCamera  # noqa: E402


def read_mrk(path: Path):
    pts = json.loads(path.read_text())["markups"][0]["controlPoints"]
    return [p["label"] for p in pts], np.array([p["position"] for p in pts], dtype=float)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--landmarks", default="python/fluororeg/data/cranium/landmarks.mrk.json")
    ap.add_argument("--out", default="out/landmarks")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ct = cranium_volume()
    names, pts = read_mrk(Path(args.landmarks))
    origin = pts.mean(axis=0)
    mu = ct.translated(-origin).hu_to_attenuation()
    model = pts - origin
    cam = ParallelCamera(384, 384, 0.7)
    # camera_from_model rotations: frontal (look along +y, posterior), lateral from left, oblique
    poses = np.array([[90.0, 0, 0, 0, 0, 0], [90.0, 0, 90.0, 0, 0, 0], [90.0, 0, 45.0, 0, 0, 0]])
    drrs = R.to_uint8(R.render_parallel(mu, poses, cam))
    xy, inside = R.project_parallel(model, poses, cam)
    tiles = []
    for n in range(len(poses)):
        img = Image.fromarray(drrs[n]).convert("RGB")
        d = ImageDraw.Draw(img)
        for m, name in enumerate(names):
            x, y = xy[n, m]
            col = (255, 80, 80) if name.endswith("_R") else (80, 160, 255) if name.endswith("_L") else (80, 255, 80)
            d.ellipse([x - 3, y - 3, x + 3, y + 3], outline=col, width=2)
            d.text((x + 4, y - 5), name.replace("_eminence", "_em"), fill=col)
        tiles.append(img)
    sheet = Image.new("RGB", (sum(t.width for t in tiles), tiles[0].height))
    x0 = 0
    for t in tiles:
        sheet.paste(t, (x0, 0))
        x0 += t.width
    sheet.save(out / "drr_overlay.png")
    # CT slice crops (axial and sagittal through each landmark).
    crops = []
    for name, p in zip(names, pts):
        i, j, k = np.round(ct.physical_to_voxel(p)).astype(int)
        ax = np.clip(ct.data[k, max(j - 25, 0):j + 25, max(i - 25, 0):i + 25], -200, 1500)
        a = Image.fromarray(((ax + 200) / 1700 * 255).astype(np.uint8)).convert("RGB").resize((100, 100), Image.NEAREST)
        dd = ImageDraw.Draw(a)
        cx = (i - max(i - 25, 0)) * 2
        cy = (j - max(j - 25, 0)) * 2
        dd.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], outline=(255, 0, 0), width=2)
        tile = Image.new("RGB", (100, 112))
        tile.paste(a, (0, 12))
        ImageDraw.Draw(tile).text((1, 0), name[:18], fill=(255, 255, 0))
        crops.append(tile)
    cols = 11
    grid = Image.new("RGB", (cols * 100, -(-len(crops) // cols) * 112))
    for n, t in enumerate(crops):
        grid.paste(t, ((n % cols) * 100, (n // cols) * 112))
    grid.save(out / "ct_slices.png")
    print(f"wrote {out / 'drr_overlay.png'} and {out / 'ct_slices.png'}")


if __name__ == "__main__":
    main()
