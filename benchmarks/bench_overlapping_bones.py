"""A second bone over the refined one: the radius refined in frames where the ulna overlaps it.

    python benchmarks/bench_overlapping_bones.py [--quick] [--json PATH]

Every bone of a joint has neighbours that overlap it in one view or both (radius and ulna,
femur and patella, tibia and fibula), and the refinement renders one bone only. The real wrist
frames (``bench_real_wrist.py``) score 0.60-0.62 at the found pose against 0.92-0.99 in every
simulated set, and have no ground truth; this benchmark isolates the neighbour's share, with
ground truth:

- the real radius and ulna CTs of Autoscoper's wrist sample (``../shared/data/autoscoper_sample``,
  subjects made with the CLI as README's "Your own data" does) and its real two-camera geometry
  (MayaCam calibrations, 1760 x 1760 px);
- the radius at the pose ``bench_real_wrist`` found in frame 99; the ulna beside it, its long
  axis (its mask's principal axis) along the radius's, its centroid ``--distances`` mm from the
  radius's in 8 directions about the axis (--quick: 4 directions, 2 distances); the share of the
  radius's silhouette the ulna covers in each view (``overlap``) says how hard each case is;
- frames: line integrals by plastimatch's exact Siddon ray tracer (an independent renderer; the
  project's own when plastimatch is not installed, said in ``renderer``) of both bones, plus a
  35 mm cylinder of soft tissue (water) about the forearm, plus Gaussian noise (0.01);
- the radius refined as ``register`` refines (``default_refine_options`` at its
  ``subject_refine_pixel_mm``) from starts 3 deg / 3 mm and 6 deg / 6 mm off the truth along
  random directions (4 each; --quick: 2 each).

Reported per case: the overlap per view, the similarity at the true pose per view, the refined
poses' errors (rotation of Eq. 3 in deg, translation in mm), how many passed the gate and how
many passed more than 1 deg or 1 mm off (``false_passes``). Summary: the same over all cases.
About a minute on 2 cores (--quick: 20 s).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fluororeg.cli import main as cli
from fluororeg.core import refine
from fluororeg.core.geometry import model_poses_from_physical, pose_matrix
from fluororeg.core.registration import pose_errors
from fluororeg.core.render import project_mask_cone, render_cone
from fluororeg.pipeline.register import subject_refine_pixel_mm
from fluororeg.simulation.neighbours import pose_beside, principal_axis, soft_tissue_cylinder
from fluororeg.simulation.simulate import perturbed_poses
from fluororeg.subject.subject import load_subject

from _common import parser, report
from bench_real_wrist import SAMPLE, make_inputs

# world_from_physical (deg, mm) of the radius CT in frame 99 (bench_real_wrist's search)
RADIUS_POSE = [92.964, -1.172, 174.558, 123.083, 116.385, 103.499]
NOISE = 0.01  # line integrals
START_OFFSETS = (3.0, 6.0)  # deg and mm off the truth


def renderer():
    """(name, render(mu, view, pose) -> [H, W]): plastimatch when installed, else our own."""
    from fluororeg.simulation import plastimatch_drr

    if plastimatch_drr.plastimatch_available():
        return "plastimatch", plastimatch_drr.render_cone_plastimatch
    return "fluororeg", lambda mu, view, pose: render_cone(mu, view, np.asarray(pose)[None])[0]


def make_ulna(root: Path):
    argv = ["subject", "init", "--ct", SAMPLE / "Models" / "uln_dcm_cropped.tif", "--voxel-size", 0.39625, 0.39625,
            0.625, "--intensity", "raw:1:-1024", "--propose", 12, "--pairs-count", 0, "--out", root / "ulna"]
    if cli([str(a) for a in argv]) != 0:
        raise SystemExit("fluororeg subject init failed for the ulna")
    return load_subject(root / "ulna")


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--distances", type=float, nargs="+", default=None,
                   help="centroid distances of the ulna from the radius, mm (default 8 12 18; --quick 8 18)")
    args = p.parse_args(argv)
    if not SAMPLE.is_dir():
        raise SystemExit(f"{SAMPLE} not found: this benchmark needs Autoscoper's sample data")
    import tempfile

    t_all = time.perf_counter()
    distances = args.distances or ([8.0, 18.0] if args.quick else [8.0, 12.0, 18.0])
    directions = range(0, 360, 90 if args.quick else 45)
    rng = np.random.default_rng(0)
    name, render = renderer()
    with tempfile.TemporaryDirectory() as tmp:
        radius, rec = make_inputs(Path(tmp))
        ulna = make_ulna(Path(tmp))
    views = rec.geometry.views
    mu, bone = radius.attenuation_model(), radius.mask_model()
    truth = model_poses_from_physical(RADIUS_POSE, radius.origin)
    c, a = principal_axis(bone)
    M = pose_matrix(truth)
    tissue_centre, tissue_axis = M[:3, :3] @ c + M[:3, 3], M[:3, :3] @ a  # about the radius
    base = np.stack([render(mu, v, truth) + soft_tissue_cylinder(v, tissue_centre, tissue_axis) for v in views])
    silhouette = np.stack([project_mask_cone(bone, v, truth[None])[0] > 0 for v in views])
    per_offset = 2 if args.quick else 4
    starts = np.concatenate([perturbed_poses(np.repeat(truth[None], per_offset, 0), off, off, rng)
                             for off in START_OFFSETS])  # ordered by offset
    options = refine.default_refine_options(views, starts, subject_refine_pixel_mm(radius))
    cases, errors_deg, errors_mm = [], [], []
    for distance in [None, *distances]:
        for direction in ([0] if distance is None else directions):
            t0 = time.perf_counter()
            frame, overlap = base.copy(), [0.0, 0.0]
            if distance is not None:
                pose = pose_beside(truth, bone, ulna.mask_model(), distance, direction)
                frame += np.stack([render(ulna.attenuation_model(), v, pose) for v in views])
                cover = np.stack([project_mask_cone(ulna.mask_model(), v, pose[None])[0] > 0 for v in views])
                overlap = [float((silhouette[k] & cover[k]).sum() / silhouette[k].sum()) for k in range(2)]
            frame = (frame + rng.normal(0.0, NOISE, frame.shape)).astype(np.float32)[None]
            at_truth, _ = refine.refine_similarity(mu, views, frame, truth[None], level=options.finest_level,
                                                   options=options, bone=bone)
            res = refine.refine_poses(mu, views, np.repeat(frame, len(starts), 0), starts, options=options, bone=bone)
            deg, mm = pose_errors(res.poses, np.repeat(truth[None], len(starts), 0))
            off = (deg > 1.0) | (mm > 1.0)
            errors_deg.append(deg[res.converged])
            errors_mm.append(mm[res.converged])
            cases.append({"distance_mm": distance, "direction_deg": direction if distance is not None else None,
                          "overlap": overlap, "similarity_at_truth": at_truth[0].tolist(),
                          "passed": int(res.converged.sum()), "false_passes": int((res.converged & off).sum()),
                          "rotation_error_deg": deg.tolist(), "translation_error_mm": mm.tolist(),
                          "status": res.status.tolist(), "seconds": time.perf_counter() - t0})
    deg_all, mm_all = np.concatenate(errors_deg), np.concatenate(errors_mm)
    overlapped = [cs for cs in cases if cs["distance_mm"] is not None]
    out = {"renderer": name, "starts_per_case": len(starts), "start_offsets": list(START_OFFSETS),
           "bone_pixel_mm": subject_refine_pixel_mm(radius), "finest_level": options.finest_level,
           "cases": cases, "refinements": len(cases) * len(starts),
           "passed": sum(cs["passed"] for cs in cases), "false_passes": sum(cs["false_passes"] for cs in cases),
           "passed_by_start_offset": {f"{o:g}": sum(int((np.array(cs["status"]) == "converged")[
               k * per_offset:(k + 1) * per_offset].sum()) for cs in cases) for k, o in enumerate(START_OFFSETS)},
           "rotation_error_deg_median": float(np.median(deg_all)), "rotation_error_deg_max": float(deg_all.max()),
           "translation_error_mm_median": float(np.median(mm_all)), "translation_error_mm_max": float(mm_all.max()),
           "overlap_max": max(max(cs["overlap"]) for cs in overlapped),
           "similarity_at_truth_alone": cases[0]["similarity_at_truth"],
           "similarity_at_truth_min": min(min(cs["similarity_at_truth"]) for cs in overlapped),
           "seconds": time.perf_counter() - t_all}
    def worst(case) -> tuple[float, str]:
        passed = np.array(case["status"]) == "converged"
        deg, mm = (np.array(case[k])[passed] for k in ("rotation_error_deg", "translation_error_mm"))
        return (float(deg.max()), f"deg, {mm.max():.3f} mm") if passed.any() else (float("nan"), "deg")

    rows = [(f"radius alone: similarity at the truth, view {k + 1}", cases[0]["similarity_at_truth"][k], "")
            for k in range(2)]
    for cs in overlapped:
        rows.append((f"ulna {cs['distance_mm']:g} mm at {cs['direction_deg']} deg: overlap "
                     f"{cs['overlap'][0]:.2f} / {cs['overlap'][1]:.2f}, similarity at the truth "
                     f"{cs['similarity_at_truth'][0]:.2f} / {cs['similarity_at_truth'][1]:.2f}; passed "
                     f"{cs['passed']} of {len(starts)}, their worst error", *worst(cs)))
    rows += [("passed the gate", out["passed"], f"of {out['refinements']}"),
             *((f"passed from starts {o} deg and mm off", n, f"of {out['refinements'] // len(START_OFFSETS)}")
               for o, n in out["passed_by_start_offset"].items()),
             ("passed more than 1 deg or 1 mm off", out["false_passes"], ""),
             ("passed: rotation error, median", out["rotation_error_deg_median"], "deg"),
             ("passed: rotation error, worst", out["rotation_error_deg_max"], "deg"),
             ("passed: translation error, median", out["translation_error_mm_median"], "mm"),
             ("passed: translation error, worst", out["translation_error_mm_max"], "mm")]
    report(f"bench_overlapping_bones: the radius refined beside the ulna ({name} frames, {len(starts)} starts "
           f"{'/'.join(f'{o:g}' for o in START_OFFSETS)} deg and mm off per case)", rows, out, args.json)
    return out


if __name__ == "__main__":
    main()
