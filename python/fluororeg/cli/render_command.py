"""``fluororeg render``: DRRs of a CT at random poses, parallel-beam (the paper's artificial
radiographs) or cone-beam through a default dual-fluoroscope layout (``--beam cone``); saves the
line integrals (``drrs.npz``), 8-bit PNGs and a contact sheet. Without ``--ct`` it uses the
default example subject's CT (the InVesalius "Cranium" head CT, fetched and cached on first use)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fluororeg.cli.common import DEVICES, add_deprecated_option, add_threads_option



def add_parser(subparsers) -> None:
    r = subparsers.add_parser("render", help="render DRRs of a CT (default: the example subject)")
    r.add_argument("--ct", help="CT file or DICOM folder (default: the example subject's CT)")
    r.add_argument("--beam", choices=["parallel", "cone"], default="parallel",
                   help="parallel beam (the paper's DRRs, default) or cone beam from a point source")
    add_deprecated_option(r, "--geometry", "--beam", dest="beam", choices=["parallel", "cone"])
    r.add_argument("--count", type=int, default=32, help="number of DRRs (default 32)")
    r.add_argument("--size", type=int, default=128, help="image width and height in pixels (default 128)")
    r.add_argument("--pixel-mm", type=float, default=2.0, help="parallel beam: pixel size in mm (default 2)")
    r.add_argument("--max-angle", type=float, default=30.0, help="random rotations within +- this (deg)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", choices=DEVICES, default="cpu")
    r.add_argument("--out", default="out/render", help="output folder (default out/render)")
    add_threads_option(r)
    r.set_defaults(handler=run, resumes=False)


def _load_ct(path: str | None):
    """The CT in its model frame (centred) and a name to print."""
    from fluororeg.io.volume_formats import load_volume

    if path is None:
        from fluororeg.subject.example import cranium_volume

        vol, name = cranium_volume(), "cranium (default example subject)"
    else:
        vol, name = load_volume(path), path
    return vol.translated(-vol.center), name


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from fluororeg.core import render as R
    from fluororeg.core.geometry import ParallelCamera
    from fluororeg.viz.contact_sheet import image_grid

    if args.count < 1:
        raise ValueError(f"--count {args.count}: expected at least 1")
    if not 8 <= args.size <= R.MAX_IMAGE_SIDE:
        raise ValueError(f"--size {args.size}: expected 8 to {R.MAX_IMAGE_SIDE} pixels")
    R.check_image_batch(args.count, args.size, args.size, names=("--count", "--size", "--size"))
    if not 0.0 <= args.max_angle <= 180.0:  # also refuses nan
        raise ValueError(f"--max-angle {args.max_angle}: expected an angle of 0 to 180 degrees")
    if args.seed < 0:
        raise ValueError(f"--seed {args.seed}: expected a whole number >= 0")
    t0 = time.perf_counter()
    ct, name = _load_ct(args.ct)
    mu = ct.hu_to_attenuation()
    print(f"CT: {name}, {ct.data.shape[::-1]} voxels (x, y, z) of {np.round(ct.spacing, 3).tolist()} mm")
    rng = np.random.default_rng(args.seed)
    n = args.count
    poses = np.concatenate([rng.uniform(-args.max_angle, args.max_angle, (n, 3)),
                            rng.uniform(-10.0, 10.0, (n, 3))], axis=1)
    t1 = time.perf_counter()
    if args.beam == "parallel":
        scales = rng.uniform(0.9, 1.1, n)
        drrs = R.render_parallel(mu, poses, ParallelCamera(args.size, args.size, args.pixel_mm), scales,
                                 device=args.device)
        extra = {"scales": scales, "pixel_mm": args.pixel_mm}
    else:
        from fluororeg.simulation.simulate import default_dual_views

        views = default_dual_views(args.size, args.size, pitch=300.0 / args.size)
        view_list = [views[i % 2] for i in range(n)]  # view 1, view 2, view 1, ...
        drrs = R.render_cone(mu, view_list, poses, device=args.device)
        extra = {"views": np.stack([v.packed() for v in view_list])}
    elapsed = time.perf_counter() - t1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "drrs.npz", drrs=drrs, poses_deg_mm=poses, beam=args.beam, **extra)
    images = R.to_uint8(drrs)
    for i, img in enumerate(images):
        Image.fromarray(img).save(out / f"drr_{i:04d}.png")
    Image.fromarray(image_grid(images)).save(out / "contact_sheet.png")
    print(f"rendered {n} {args.beam}-beam DRRs of {args.size}x{args.size} in {elapsed * 1e3:.1f} ms "
          f"({n / elapsed:.0f} DRR/s) on {args.device}")
    print(f"wrote {out / 'drrs.npz'}, {n} PNGs and {out / 'contact_sheet.png'} "
          f"(total {time.perf_counter() - t0:.1f} s)")
    return 0
