"""Real fluoroscopy: how the intensity refinement sees the radius in Autoscoper's wrist sample.

    python benchmarks/bench_real_wrist.py [--quick] [--json PATH]

The sample (``../shared/data/autoscoper_sample``: undistorted 1760 x 1760 frames 0002, 0099,
0158 of two fluoroscopes, MayaCam calibrations, the radius as a segmented uint16 TIFF stack) has
no ground truth and no landmarks, and a detector trained on its DRRs does not reach it (15
epochs, 7 px on its own validation DRRs: every frame flagged). So the radius is found
without a detector, by a multi-start search on the refinement's own objective:

1. subject, geometry and recording made with the CLI, as README's "Your own data" does;
2. the forearm's axis triangulated from two points per view picked by eye in frame 99 (the
   radius barely moves between frames 99 and 158; frame 2's forearm is elsewhere and is not
   searched);
3. starts: the bone's long axis (its mask's principal axis) along the forearm's, both ways,
   spun about it in 15 deg steps, shifted over a grid of +-12 mm across and +-20 mm along it
   (6,000 starts); each scored by the similarity on frames and views 32 times coarser (the
   pyramid's coarsest level), the best 40 (--quick: 20) refined
   (:func:`fluororeg.core.refine.refine_poses`) at the bone's pixel size (its dataset's field
   of view over 128 px, ``subject_refine_pixel_mm``, as ``register`` refines). A coarser grid
   (30 deg, 10 mm steps) found a wrong optimum in both frames (0.23 and 0.32). About half a
   minute on 2 cores.

Reported per frame: the best optimum's similarity per view and the best other optimum's
(``runner_up``: more than 2 deg or 2 mm away), how sharp the peak is (the similarity 1 deg
and 1 mm off, mean over the 3 axes, at the finest level), and the similarity at the found pose
for pyramid levels 1-3 (pixel at the bone 0.33 / 0.67 / 1.3 mm). Then the pipeline's
refinement stage (``refine_recording_poses``) from the found poses: at the bone's pixel size
and at a head's 2 mm (what every bone got before), with its statuses and pose changes.
``frames_agree_deg`` / ``_mm``: how far apart the poses found independently in frames 99 and
158 are (the forearm held still). ``track_from_frame_99``: ``fluororeg track`` from frame 99's
found pose alone, and how far frame 158's tracked pose is from the one its own search found.
The found poses (``world_from_physical``, the CT's own frame) are what
``tests/pipeline/test_real_wrist_refinement.py`` starts from.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from fluororeg.cli import main as cli
from fluororeg.core import refine
from fluororeg.core.geometry import physical_poses_from_model, pose_from_matrix, pose_matrix
from fluororeg.core.registration import pose_errors
from fluororeg.io.recording import open_recording
from fluororeg.pipeline import refine_stage
from fluororeg.pipeline.quality import REGISTERED_STATUSES
from fluororeg.pipeline.register import subject_refine_pixel_mm
from fluororeg.pipeline.track import TrackOptions, track_recording
from fluororeg.simulation.neighbours import principal_axis
from fluororeg.subject.subject import load_subject

from _common import parser, report

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / ".." / "shared" / "data" / "autoscoper_sample"
# Forearm points (frame pixels) picked by eye in frame 99: near the wrist and 35 mm down the arm.
PICKED = {"view1": ((800, 1250), (800, 1600)), "view2": ((720, 1250), (740, 1600))}
REFINED_STARTS = 40  # the best-scored starts refined (--quick: 20)


def make_inputs(root: Path):
    """The radius subject and the wrist recording, by CLI commands."""
    for argv in (["subject", "init", "--ct", SAMPLE / "Models" / "rad_dcm_cropped.tif", "--voxel-size", 0.39625,
                  0.39625, 0.625, "--intensity", "raw:1:-1024", "--propose", 12, "--pairs-count", 0,
                  "--out", root / "radius"],
                 ["calibrate", "geometry", "--mayacam",
                  *[SAMPLE / "Calibration" / f"xr_calib_wrist_cam0{k}.txt" for k in (1, 2)], "--pitch", 0.2,
                  "--out", root / "geometry.json"],
                 ["recording", "init", *[SAMPLE / "XMA_UND" / f"xr_data_wrist_cam0{k}" for k in (1, 2)],
                  "--geometry", root / "geometry.json", "--out", root / "recording"]):
        if cli([str(a) for a in argv]) != 0:
            raise SystemExit(f"fluororeg {argv[0]} failed")
    return load_subject(root / "radius"), open_recording(root / "recording")


def ray(view, xy) -> tuple[np.ndarray, np.ndarray]:
    """The ray from the view's source through pixel xy: (origin [3], unit direction [3]) mm."""
    d = view.pixel_to_world(np.asarray(xy, float)) - view.source
    return view.source, d / np.linalg.norm(d)


def triangulate(r1, r2) -> np.ndarray:
    """The midpoint [3] mm of the shortest segment between two rays."""
    (a, u), (b, v) = r1, r2
    w = a - b
    s, t = np.linalg.solve(np.array([[u @ u, -u @ v], [u @ v, -v @ v]]), [-w @ u, -w @ v])
    return 0.5 * (a + s * u + b + t * v)


def search_starts(views, bone) -> np.ndarray:
    """Starts [N, 6] (deg, mm) around the triangulated forearm (see the module's docstring)."""
    near, far = (triangulate(ray(views[0], PICKED["view1"][k]), ray(views[1], PICKED["view2"][k])) for k in (0, 1))
    axis = (near - far) / np.linalg.norm(near - far)
    across1 = np.cross(axis, [0.0, 0.0, 1.0])
    across1 /= np.linalg.norm(across1)
    across2 = np.cross(axis, across1)
    centre, long_axis = principal_axis(bone)
    spins = np.arange(0, 360, 15)
    along = (-20, -10, 0, 10, 20)
    across = (-12, -6, 0, 6, 12)
    starts = []
    for sign in (1, -1):
        aligned = Rotation.align_vectors([sign * axis], [long_axis])[0]
        for spin in spins:
            R = (Rotation.from_rotvec(np.deg2rad(spin) * axis) * aligned).as_matrix()
            for a in along:
                for d1 in across:
                    for d2 in across:
                        M = np.eye(4)
                        M[:3, :3] = R
                        M[:3, 3] = near + a * axis + d1 * across1 + d2 * across2 - R @ centre
                        starts.append(pose_from_matrix(M))
    return np.array(starts)


def coarse_inputs(views, images, masks, factor: int):
    """Views, images [F, 2, H/f, W/f] (block means) and masks (all of a block usable) ``factor``
    times coarser: the search's starts are scored on these, at level 0, without a pyramid of
    the full frames per start."""
    H, W = images.shape[-2:]
    if H % factor or W % factor:
        raise ValueError(f"frames of {W} x {H} px do not divide into blocks of {factor}")
    blocks = images.reshape(*images.shape[:-2], H // factor, factor, W // factor, factor)
    small = [dataclasses.replace(v, pitch_u=v.pitch_u * factor, pitch_v=v.pitch_v * factor, width=W // factor,
                                 height=H // factor) for v in views]
    usable = masks.reshape(2, H // factor, factor, W // factor, factor).min(axis=(2, 4))
    return small, np.ascontiguousarray(blocks.mean(axis=(-3, -1)), dtype=np.float32), usable


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    if not SAMPLE.is_dir():
        raise SystemExit(f"{SAMPLE} not found: this benchmark needs Autoscoper's sample data")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        subject, rec = make_inputs(Path(tmp))
        views = rec.geometry.views
        mu, bone = subject.attenuation_model(), subject.mask_model()
        pixel_mm = subject_refine_pixel_mm(subject)
        frames = [1, 2]  # positions of frames 99 and 158
        images, masks = refine_stage.recording_images(rec, frames)
        starts = search_starts(views, bone)
        options = refine.refine_options(finest_level=refine.auto_finest_level(views, starts[:1], pixel_mm))
        coarsest = options.finest_level + options.num_levels - 1
        out = {"starts": len(starts), "bone_pixel_mm": pixel_mm, "finest_level": options.finest_level,
               "frames": [int(rec.frame_numbers[f]) for f in frames]}
        found = []
        rows = []
        for k, f in enumerate(frames):
            number = int(rec.frame_numbers[f])
            t0 = time.perf_counter()
            small_views, small, small_masks = coarse_inputs(views, images[k:k + 1], masks, 2 ** coarsest)
            scores = np.nanmean(refine.refine_similarity(
                mu, small_views, np.repeat(small, len(starts), 0), starts,
                options=refine.refine_options(finest_level=0, num_levels=1), bone=bone,
                image_masks=small_masks)[0], axis=1)
            best = np.argsort(-np.nan_to_num(scores, nan=-1.0))[:REFINED_STARTS // (2 if args.quick else 1)]
            res = refine.refine_poses(mu, views, np.repeat(images[k:k + 1], len(best), 0), starts[best],
                                      options=options, bone=bone, image_masks=masks, relative_similarity=None)
            order = np.argsort(-np.nan_to_num(res.similarity_total, nan=-1.0))
            top = res.poses[order[0]]
            angle, dist = pose_errors(res.poses, np.repeat(top[None], len(res.poses), 0))
            others = order[(angle[order] > 2.0) | (dist[order] > 2.0)]
            runner_up = float(res.similarity_total[others[0]]) if len(others) else float("nan")
            # The peak: 1 deg and 1 mm off along each axis, at the finest level.
            probes = [top]
            for axis in range(6):
                for step in (-1.0, 1.0):
                    q = top.copy()
                    q[axis] += step
                    probes.append(q)
            sim = np.nanmean(refine.refine_similarity(mu, views, np.repeat(images[k:k + 1], len(probes), 0),
                                                      np.array(probes), level=options.finest_level, options=options,
                                                      bone=bone, image_masks=masks)[0], axis=1)
            by_level = {}
            for level in (1, 2, 3):
                s, _ = refine.refine_similarity(mu, views, images[k:k + 1], top[None], level=level,
                                                options=refine.refine_options(finest_level=level), bone=bone,
                                                image_masks=masks)  # the volume at that level's pixel
                by_level[level] = s[0].tolist()
            found.append(top)
            out[f"frame_{number}"] = {
                "similarity": res.similarity[order[0]].tolist(), "similarity_total": float(sim[0]),
                "runner_up_similarity": runner_up, "similarity_1deg_off": float(np.mean(sim[1:7])),
                "similarity_1mm_off": float(np.mean(sim[7:])), "similarity_by_level": by_level,
                "world_from_physical": physical_poses_from_model(top, subject.origin).round(3).tolist(),
                "search_seconds": time.perf_counter() - t0}
            rows += [(f"frame {number}: similarity at the found pose (view 1, view 2 mean)", float(sim[0]), ""),
                     (f"frame {number}: best other optimum", runner_up, ""),
                     (f"frame {number}: similarity 1 deg off (mean over the 3 axes, both ways)",
                      float(np.mean(sim[1:7])), ""),
                     (f"frame {number}: similarity 1 mm off (mean over the 3 axes, both ways)",
                      float(np.mean(sim[7:])), ""),
                     (f"frame {number}: search", out[f"frame_{number}"]["search_seconds"], "s")]
        found = np.array(found)
        out["frames_agree_deg"], out["frames_agree_mm"] = pose_errors(found[0], found[1])
        rows += [("rotation between the poses found in frames 99 and 158", out["frames_agree_deg"], "deg"),
                 ("translation between them", out["frames_agree_mm"], "mm")]
        # The pipeline's stage from the found poses: the bone's pixel size against a head's 2 mm.
        start = np.full((len(rec), 6), np.nan)
        start[frames] = found
        status = np.array(["large_residual", "ok", "ok"])
        for name, px in (("bone_pixel", pixel_mm), ("head_pixel", refine.DEFAULT_PIXEL_MM)):
            _, st, cols = refine_stage.refine_recording_poses(rec, subject, start, status, track=False, pixel_mm=px)
            out[f"stage_{name}"] = {"pixel_mm": px, "status": st[frames].tolist(),
                                    "similarity_view1": cols["similarity_view1"][frames].tolist(),
                                    "similarity_view2": cols["similarity_view2"][frames].tolist(),
                                    "rotation_change_deg": cols["refine_rotation_change_deg"][frames].tolist(),
                                    "translation_change_mm": cols["refine_translation_change_mm"][frames].tolist()}
            rows.append((f"refinement stage at {px:.2f} mm: frames registered ({', '.join(st[frames])})",
                         float(np.isin(st[frames], REGISTERED_STATUSES).sum()), f"of {len(frames)}"))
        # `fluororeg track` from frame 99's found pose alone: frame 158 against its own search.
        seed = np.full((len(rec), 6), np.nan)
        seed[frames[0]] = found[0]
        t0 = time.perf_counter()
        tracked = track_recording(rec, subject, seed, TrackOptions(refine_device="cpu"))
        apart_deg, apart_mm = (pose_errors(tracked.poses[frames[1]], found[1])
                               if np.isfinite(tracked.poses[frames[1]]).all() else (float("nan"),) * 2)
        out["track_from_frame_99"] = {"status": tracked.status.tolist(), "seconds": time.perf_counter() - t0,
                                      "frame_158_from_its_search_deg": apart_deg,
                                      "frame_158_from_its_search_mm": apart_mm}
        rows += [(f"track from frame 99's pose ({', '.join(tracked.status)}): frame 158 from its own search",
                  out["track_from_frame_99"]["frame_158_from_its_search_deg"], "deg"),
                 ("the same, translation", out["track_from_frame_99"]["frame_158_from_its_search_mm"], "mm")]
    out["seconds"] = time.perf_counter() - t_all
    report(f"bench_real_wrist: the radius in Autoscoper's wrist sample, {out['starts']} starts per frame, "
           f"refined at {pixel_mm:.2f} mm (level {options.finest_level})", rows, out, args.json)
    return out


if __name__ == "__main__":
    main()
