"""Benchmark of the intensity refinement: accuracy, convergence and time per frame pair.

Frames: a recording simulated by ``fluororeg.simulation.simulate`` (cone-beam DRRs turned into
intensifier frames: Poisson noise, gamma, vignetting, blur, distortion, circular field of view;
read back, undistorted and Beer-Lambert inverted by ``refine_stage.recording_images``), and, when
plastimatch is installed, frames from that independent renderer (exact Siddon DRRs): plain line
integrals (``plastimatch``), and a recording with other image-intensifier effects
(``plastimatch_intensifier``: ``simulate_independent_recording``, read like register reads it).
Starts: the true poses perturbed by 3-10 deg / 2-5 mm (random axis and direction), the
landmark path's typical error on unseen X-rays (this benchmark has no trained detector, so it
does not run the landmark path itself). Errors are the paper's Eq. 3 (infinity norms, deg and
mm). Times are wall-clock per frame pair of a batch on all cores of this machine. With a CUDA
device (``--device cuda``) the same frames are refined with the renders on the device, and, for
the throughput of a recording, 256 frames (these repeated, from other starts) at once, with 32
to 256 frames in flight (``RefineOptions.cuda_frames_in_flight``: their renders are gathered
into few large launches): ``refine_ms_per_frame_cuda`` at the default, every setting under
``refine_ms_per_frame_cuda_by_frames_in_flight``; ``refine_ms_per_frame_cuda_small_batch``: the
frames above alone; ``refine_ms_per_frame_cuda_by_render_threads``: the default in flight with
1, 4 and 8 host threads in each gathered round's render call (``RefineOptions.cuda_render_threads``:
its copies in and out); ``refine_cpu_ms_per_frame_cuda``: the process's CPU time per frame pair of
the default run (all threads). ``refine_host_ms_per_frame`` (and ``..._cuda``): the frames' own host
work, CPU time with their renders excluded (``RefineResult.host_seconds``): what a GPU leaves to
the host's cores, so that with the renders on CUDA a machine of C cores refines at most about
C / that many frame pairs per millisecond.

    python benchmarks/bench_refine.py [--quick] [--json PATH] [--frames N] [--subject cranium|headsq]
                                      [--models out/demo/models]

``--models DIR`` adds the path register takes: starts from a trained detector's landmark poses on
the independent-renderer recordings, refined by the pipeline's stage; its figures then fill the
top-level keys (``refined_*_median`` over frames with the bone inside both fields,
``converged_fraction``: frames ending within 1 deg and 1 mm of the truth, of those with a
landmark pose; ``refine_s_per_frame_cpu``). It also refines every fourth frame against one view
alone (the other declared failed, as the input checks declare a blank view; tracked from a
neighbour): ``one_view_*`` keys. ``depth_*``: the stage's depth check of the landmark poses the
landmark gate held back (frames checked; those whose depth-reversed twin got past the check's
first look and passed the gate; registered at the twin; left ``ambiguous_depth``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

import fluororeg as fr
from fluororeg.core import refine
from fluororeg.pipeline import refine_stage
from fluororeg.simulation.simulate import perturbed_poses

from _common import cuda_name, parser, report


CUDA_BATCH_FRAMES = 256  # frames of the CUDA throughput rows (refine_ms_per_frame_cuda)
CUDA_FRAMES_IN_FLIGHT = (32, 64, 128, 256)  # RefineOptions.cuda_frames_in_flight timed
CUDA_RENDER_THREADS = (1, 4, 8)  # RefineOptions.cuda_render_threads timed (at the default in flight)


def use_finite_differences() -> None:
    """--finite-differences: every refinement of this run (here and in the pipeline's stage, which
    makes its options with refine.refine_options) takes the Jacobian of 12 renders."""
    made = refine.refine_options

    def refine_options(**fields):
        return made(**{"analytic_jacobian": False, **fields})

    refine.refine_options = refine_options


def headsq_subject():
    from fluororeg.subject.example import headsq_path
    from fluororeg.subject.landmarks import Landmarks
    from fluororeg.subject.subject import make_subject
    from fluororeg.io.volume_formats import load_volume

    ct = load_volume(headsq_path())
    bone = ct.mask(300.0).data.astype(bool)
    k, j, i = np.nonzero(bone)
    P = ct.voxel_to_physical(np.stack([i, j, k], axis=1).astype(float))
    picks = {"left": P[np.argmax(P[:, 0])], "right": P[np.argmin(P[:, 0])], "front": P[np.argmin(P[:, 1])],
             "back": P[np.argmax(P[:, 1])], "top": P[np.argmax(P[:, 2])], "bottom": P[np.argmin(P[:, 2])]}
    return make_subject("headsq", ct, Landmarks(tuple(picks), np.array(list(picks.values()))),
                        pairs=[("left", "right")])


def load_subject(name: str):
    from fluororeg.subject.example import default_cache_dir

    if name == "auto":
        name = "cranium" if (default_cache_dir() / "cranium_hu.npz").is_file() else "headsq"
    if name == "cranium":
        from fluororeg.subject.subject import example_subject

        return example_subject()
    return headsq_subject()


def summarise(res, truth, starts, both_in_fov, seconds_per_frame, cpu_seconds_per_frame) -> dict:
    ea, ep = fr.pose_errors(res.poses, truth)
    sa, sp = fr.pose_errors(starts, truth)
    sel = both_in_fov if both_in_fov.any() else np.ones(len(truth), bool)
    med = lambda x: float(np.median(x)) if len(x) else float("nan")  # noqa: E731
    good = (ea < 1.0) & (ep < 1.0)
    flagged = ~res.converged
    return {
        "frames": int(len(truth)),
        "frames_bone_in_both_fields": int(both_in_fov.sum()),
        "landmark_angle_err_deg_median": float(np.median(sa)),
        "landmark_position_err_mm_median": float(np.median(sp)),
        "refined_angle_err_deg_median": med(ea[sel]),
        "refined_position_err_mm_median": med(ep[sel]),
        "refined_angle_err_deg_median_all_frames": med(ea),
        "refined_position_err_mm_median_all_frames": med(ep),
        "refined_angle_err_deg_max": float(ea.max()),
        "refined_position_err_mm_max": float(ep.max()),
        "refined_angle_err_deg_all": [round(float(x), 4) for x in ea],
        "refined_position_err_mm_all": [round(float(x), 4) for x in ep],
        "converged_fraction": float(res.converged.mean()),
        "recovered_fraction": float(good.mean()),  # error < 1 deg and < 1 mm
        "every_unrecovered_flagged": bool(np.all(flagged[~good])),
        "passed_gate_but_unrecovered": int(np.sum(res.converged & ~good)),
        "similarity_median": [float(np.nanmedian(res.similarity[:, k])) for k in range(2)],
        "similarity_total": [round(float(x), 4) for x in res.similarity_total],
        "status": [str(s) for s in res.status],
        "iterations_median": float(np.median(res.iterations)),
        # The render work per frame pair, the same on every device (on CUDA each call is one
        # gathered round, which the frame waits for).
        "render_calls_per_frame": float(np.mean(res.render_calls)),
        "rendered_rays_per_frame": float(np.mean(res.rendered_rays)),
        "refine_s_per_frame_cpu": float(seconds_per_frame),
        "refine_cpu_time_s_per_frame": float(cpu_seconds_per_frame),
        # The frames' own host work (RefineResult.host_seconds: CPU time, renders excluded), the
        # part a GPU leaves to the host's cores: with the renders on CUDA a machine refines at
        # most 1000 * cores / this frame pairs per second.
        "refine_host_ms_per_frame": float(1e3 * np.mean(res.host_seconds)),
        "threads": os.cpu_count(),
    }


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], device=True)
    p.add_argument("--frames", type=int, default=None, help="frames of the simulated recording")
    p.add_argument("--subject", default="auto", choices=["auto", "cranium", "headsq"],
                   help="CT: the example cranium when cached (no download), else headsq")
    p.add_argument("--finest-level", type=int, default=None,
                   help="finest pyramid level (0: 512 px; default: refine.auto_finest_level)")
    p.add_argument("--num-levels", type=int, default=refine.RefineOptions().num_levels)
    p.add_argument("--models", help="folder with a trained detector.onnx: also refine from its landmark poses on the "
                                    "independent-renderer recordings (benchmarks/independent_recordings.py; built when "
                                    "missing), the pipeline's refinement stage as register runs it")
    p.add_argument("--independent-dir", default="out/independent", help="--models: where those recordings are")
    p.add_argument("--independent-frames", type=int, default=12, help="--models: frame pairs per recording")
    p.add_argument("--start-deg", type=float, nargs=2, default=(3.0, 10.0), metavar=("LO", "HI"),
                   help="start rotation error range, deg (default 3 10)")
    p.add_argument("--start-mm", type=float, nargs=2, default=(2.0, 5.0), metavar=("LO", "HI"),
                   help="start translation error range, mm (default 2 5)")
    p.add_argument("--no-ncc", action="store_true", help="skip the NCC comparison")
    p.add_argument("--finite-differences", action="store_true",
                   help="the Jacobian by central differences of 12 renders (RefineOptions.analytic_jacobian off)")
    args = p.parse_args(argv)
    if args.finite_differences:
        use_finite_differences()
    F = args.frames or (6 if args.quick else 16)

    from fluororeg.io.recording import open_recording
    from fluororeg.simulation.simulate import simulate_recording

    subject = load_subject(args.subject)
    mu, bone = subject.attenuation_model(), subject.mask_model()
    rng = np.random.default_rng(0)
    results: dict = {"subject": subject.name, "start": f"truth perturbed {args.start_deg[0]:g}-{args.start_deg[1]:g} deg"
                     f" / {args.start_mm[0]:g}-{args.start_mm[1]:g} mm (no trained detector: the landmark path is not "
                     "run)", "finest_level": args.finest_level,
                     "num_levels": args.num_levels}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        simulate_recording(subject, Path(tmp) / "rec", scenario="walking", n_frames=F, seed=1)
        results["simulate_s"] = time.perf_counter() - t
        rec = open_recording(Path(tmp) / "rec")
        truth_file = np.load(Path(tmp) / "rec" / "truth.npz")
        truth, in_fov = truth_file["poses"], truth_file["in_fov"]
        images, masks = refine_stage.recording_images(rec)
    # "Bone inside both fields": at least 90 % of the landmarks inside each view's field of view.
    both = (in_fov.mean(axis=2) >= 0.9).all(axis=1)
    views = rec.geometry.views
    starts = perturbed_poses(truth, tuple(args.start_deg), tuple(args.start_mm), rng)
    per_similarity = {}
    for sim in ("gradient_correlation",) + (() if args.no_ncc else ("ncc",)):
        finest = args.finest_level if args.finest_level is not None else refine.auto_finest_level(views, starts)
        results["finest_level"] = finest
        opts = refine.refine_options(similarity=sim, finest_level=finest, num_levels=args.num_levels)
        refine.refine_poses(mu, views, images[:1], starts[:1], options=opts, bone=bone, image_masks=masks)  # warm-up
        t, c = time.perf_counter(), time.process_time()
        res = refine.refine_poses(mu, views, images, starts, options=opts, bone=bone, image_masks=masks)
        s = summarise(res, truth, starts, both, (time.perf_counter() - t) / F, (time.process_time() - c) / F)
        per_similarity[sim] = s
        rows += [(f"{sim}: angle err median", s["refined_angle_err_deg_median"], "deg"),
                 (f"{sim}: position err median", s["refined_position_err_mm_median"], "mm"),
                 (f"{sim}: recovered (<1 deg, <1 mm)", s["recovered_fraction"], ""),
                 (f"{sim}: converged (gate)", s["converged_fraction"], ""),
                 (f"{sim}: time per frame pair", s["refine_s_per_frame_cpu"], "s"),
                 (f"{sim}: render calls / rays per frame pair", s["render_calls_per_frame"],
                  f"/ {s['rendered_rays_per_frame']:.3g}"),
                 (f"{sim}: CPU time per frame pair", s["refine_cpu_time_s_per_frame"], "s"),
                 (f"{sim}: host work per frame pair (CPU time, renders excluded)", s["refine_host_ms_per_frame"],
                  "ms")]
    # The default similarity's figures at the top level.
    default = "gradient_correlation" if refine.RefineOptions().similarity == refine.RefineSimilarity.gradient_correlation \
        else "ncc"
    results.update({k: v for k, v in per_similarity[default].items()})
    results["similarity"] = default
    results["simulated"] = per_similarity
    # The same frames with the renders on CUDA (RenderConePixels on the device), when usable.
    from fluororeg.core.render import resolve_device

    results["refine_ms_per_frame_cuda"] = None
    if resolve_device(args.device) == "cuda":
        opts = refine.refine_options(finest_level=results["finest_level"], num_levels=args.num_levels)
        refine.refine_poses(mu, views, images[:1], starts[:1], options=opts, bone=bone, image_masks=masks,
                            device="cuda")  # warm-up: uploads the pyramid
        t = time.perf_counter()
        res = refine.refine_poses(mu, views, images, starts, options=opts, bone=bone, image_masks=masks, device="cuda")
        s = summarise(res, truth, starts, both, (time.perf_counter() - t) / F, float("nan"))
        cpu_poses = per_similarity[default]
        # A recording's worth of frames at once (the renders of the frames in flight are gathered
        # into few large launches): these frames repeated, from other starts.
        reps = -(-CUDA_BATCH_FRAMES // F)
        truth_b = np.tile(truth, (reps, 1))[:CUDA_BATCH_FRAMES]
        starts_b = perturbed_poses(truth_b, tuple(args.start_deg), tuple(args.start_mm), np.random.default_rng(11))
        images_b = np.tile(images, (reps, 1, 1, 1))[:CUDA_BATCH_FRAMES]

        def timed_batch(**fields) -> dict:
            """The 256 frames refined on CUDA with these options' fields: summarise's figures."""
            opts_b = refine.refine_options(finest_level=results["finest_level"], num_levels=args.num_levels,
                                           **fields)
            t, c = time.perf_counter(), time.process_time()
            res_b = refine.refine_poses(mu, views, images_b, starts_b, options=opts_b, bone=bone, image_masks=masks,
                                        device="cuda")
            return summarise(res_b, truth_b, starts_b, np.tile(both, reps)[:CUDA_BATCH_FRAMES],
                             (time.perf_counter() - t) / CUDA_BATCH_FRAMES,
                             (time.process_time() - c) / CUDA_BATCH_FRAMES)

        by_in_flight, by_render_threads = {}, {}
        default_in_flight = refine.RefineOptions().cuda_frames_in_flight
        default_render_threads = refine.RefineOptions().cuda_render_threads
        for in_flight in sorted(set(CUDA_FRAMES_IN_FLIGHT) | {default_in_flight}):
            s_b = timed_batch(cuda_frames_in_flight=in_flight)
            by_in_flight[in_flight] = 1e3 * s_b["refine_s_per_frame_cpu"]
            rows.append((f"cuda: {CUDA_BATCH_FRAMES} frames, {in_flight} in flight: time per frame pair",
                         by_in_flight[in_flight], "ms"))
            if in_flight == default_in_flight:
                results["refine_ms_per_frame_cuda"] = by_in_flight[in_flight]
                by_render_threads[default_render_threads] = by_in_flight[in_flight]
                default_b = s_b
        # The gathered rounds' host threads (copies in and out), at the default frames in flight.
        for threads in sorted(set(CUDA_RENDER_THREADS) - {default_render_threads}):
            by_render_threads[threads] = 1e3 * timed_batch(cuda_render_threads=threads)["refine_s_per_frame_cpu"]
            rows.append((f"cuda: {CUDA_BATCH_FRAMES} frames, {threads} render threads: time per frame pair",
                         by_render_threads[threads], "ms"))
        results["refine_ms_per_frame_cuda_by_render_threads"] = dict(sorted(by_render_threads.items()))
        s_b = default_b
        results["refine_ms_per_frame_cuda_by_frames_in_flight"] = by_in_flight
        results["refine_ms_per_frame_cuda_batch_frames"] = CUDA_BATCH_FRAMES
        # The process's CPU time per frame pair of that run (every thread: the frames' host work,
        # the render thread's launches and waits) and the frames' own host work in it.
        results["refine_cpu_ms_per_frame_cuda"] = 1e3 * s_b["refine_cpu_time_s_per_frame"]
        results["refine_host_ms_per_frame_cuda"] = s_b["refine_host_ms_per_frame"]
        results["refine_ms_per_frame_cuda_small_batch"] = 1e3 * s["refine_s_per_frame_cpu"]
        results["cuda_device"] = cuda_name()
        results["cuda"] = {k: s[k] for k in ("refined_angle_err_deg_median", "refined_position_err_mm_median",
                                             "converged_fraction")}
        results["cuda_batch"] = {k: s_b[k] for k in ("refined_angle_err_deg_median", "refined_position_err_mm_median",
                                                     "converged_fraction", "recovered_fraction",
                                                     "render_calls_per_frame", "rendered_rays_per_frame")}
        rows += [(f"cuda: time per frame pair, {F} frames", results["refine_ms_per_frame_cuda_small_batch"], "ms"),
                 ("cuda: angle err median", s["refined_angle_err_deg_median"],
                  f"deg (cpu {cpu_poses['refined_angle_err_deg_median']:.4g})"),
                 (f"cuda: {CUDA_BATCH_FRAMES} frames (default in flight): recovered (<1 deg, <1 mm)",
                  s_b["recovered_fraction"], ""),
                 (f"cuda: {CUDA_BATCH_FRAMES} frames: CPU time per frame pair (all threads)",
                  results["refine_cpu_ms_per_frame_cuda"], "ms"),
                 (f"cuda: {CUDA_BATCH_FRAMES} frames: host work per frame pair (renders excluded)",
                  results["refine_host_ms_per_frame_cuda"], "ms")]
    else:
        results["cuda_note"] = "no CUDA device here: refine_ms_per_frame_cuda not measured"
    rows.insert(0, ("start angle err median", per_similarity[default]["landmark_angle_err_deg_median"], "deg"))

    # Frames from the NumPy reference renderer: fine-step ray marching (half the finest voxel)
    # through the full-resolution CT with SciPy's trilinear interpolation, 128 px views over
    # the same field, 1 % noise: a different sampling of a different volume than the pyramid
    # the refinement renders.
    from fluororeg._reference.render import line_integral_cone

    n_ref = 4 if args.quick else 8
    views_ref = tuple(fr.core.geometry.ConeView(v.source, v.intensifier_centre, v.u, v.v, v.pitch_u * 4, v.pitch_v * 4,
                                           v.width // 4, v.height // 4) for v in views)
    t = time.perf_counter()
    imgs = np.stack([np.stack([line_integral_cone(mu, v, truth[i]) for v in views_ref]) for i in range(n_ref)])
    imgs = (imgs + rng.normal(0, 0.01 * imgs.max(), imgs.shape)).astype(np.float32)
    results["reference_render_s"] = time.perf_counter() - t
    opts = refine.refine_options(finest_level=refine.auto_finest_level(views_ref, starts[:n_ref]))
    t, c = time.perf_counter(), time.process_time()
    res = refine.refine_poses(mu, views_ref, imgs, starts[:n_ref], options=opts, bone=bone)
    s = summarise(res, truth[:n_ref], starts[:n_ref], both[:n_ref], (time.perf_counter() - t) / n_ref,
                  (time.process_time() - c) / n_ref)
    results["reference_renderer"] = s
    rows += [("numpy reference frames: angle err median", s["refined_angle_err_deg_median_all_frames"], "deg"),
             ("numpy reference frames: position err median", s["refined_position_err_mm_median_all_frames"], "mm"),
             ("numpy reference frames: converged", s["converged_fraction"], "")]

    # Independent renderer (plastimatch), when installed.
    try:
        from fluororeg.simulation import plastimatch_drr as pm
        available = pm.plastimatch_available()
    except ImportError:
        available = False
    results["plastimatch_available"] = bool(available)
    if available:
        views_pm = tuple(fr.core.geometry.ConeView(v.source, v.intensifier_centre, v.u, v.v, v.pitch_u * 2, v.pitch_v * 2,
                                              v.width // 2, v.height // 2) for v in views)
        n = min(F, 6 if args.quick else 12)
        imgs = np.stack([np.stack([pm.render_cone_plastimatch(mu, v, truth[i]) for v in views_pm])
                         for i in range(n)]).astype(np.float32)
        opts = refine.refine_options(finest_level=refine.auto_finest_level(views_pm, starts[:n]),
                                     num_levels=args.num_levels)
        t, c = time.perf_counter(), time.process_time()
        res = refine.refine_poses(mu, views_pm, imgs, starts[:n], options=opts, bone=bone)
        s = summarise(res, truth[:n], starts[:n], np.ones(n, bool), (time.perf_counter() - t) / n,
                      (time.process_time() - c) / n)
        results["plastimatch"] = s
        rows += [("plastimatch: angle err median", s["refined_angle_err_deg_median"], "deg"),
                 ("plastimatch: position err median", s["refined_position_err_mm_median"], "mm"),
                 ("plastimatch: converged", s["converged_fraction"], "")]
        # The same renderer with image-intensifier effects unlike the simulator's (scatter, heel,
        # distortion fitted from a bead plate, noise, partial fields; 112 deg views): the frames
        # go through the recording path (undistortion, Beer-Lambert inversion) as register's do.
        n_fx = 4 if args.quick else 8
        with tempfile.TemporaryDirectory() as tmp:
            pm.simulate_independent_recording(subject, Path(tmp) / "rec", scenario="walking", n_frames=n_fx, seed=2)
            rec_fx = open_recording(Path(tmp) / "rec")
            fx_file = np.load(Path(tmp) / "rec" / "truth.npz")
            truth_fx, in_fov_fx = fx_file["poses"], fx_file["in_fov"]
            images_fx, masks_fx = refine_stage.recording_images(rec_fx)
        views_fx = rec_fx.geometry.views
        starts_fx = perturbed_poses(truth_fx, tuple(args.start_deg), tuple(args.start_mm), rng)
        opts = refine.refine_options(finest_level=refine.auto_finest_level(views_fx, starts_fx),
                                     num_levels=args.num_levels)
        t, c = time.perf_counter(), time.process_time()
        res = refine.refine_poses(mu, views_fx, images_fx, starts_fx, options=opts, bone=bone, image_masks=masks_fx)
        s = summarise(res, truth_fx, starts_fx, (in_fov_fx.mean(axis=2) >= 0.9).all(axis=1),
                      (time.perf_counter() - t) / n_fx, (time.process_time() - c) / n_fx)
        results["plastimatch_intensifier"] = s
        rows += [("plastimatch + intensifier: angle err median", s["refined_angle_err_deg_median"], "deg"),
                 ("plastimatch + intensifier: position err median", s["refined_position_err_mm_median"], "mm"),
                 ("plastimatch + intensifier: recovered (<1 deg, <1 mm)", s["recovered_fraction"], ""),
                 ("plastimatch + intensifier: converged", s["converged_fraction"], "")]
    if args.models:
        part, part_rows = from_landmark_poses(args)
        results["landmark_starts"] = part
        results.update({k: part[k] for k in ("refined_angle_err_deg_median", "refined_position_err_mm_median",
                                             "landmark_angle_err_deg_median", "converged_fraction",
                                             "refine_s_per_frame_cpu")})
        results["top_level_keys_from"] = "landmark_starts (trained detector, independent-renderer recordings)"
        rows += part_rows
    report(f"bench_refine ({F} simulated frames of '{subject.name}', {views[0].width} px views)", rows, results,
           args.json)
    return results


def from_landmark_poses(args) -> tuple[dict, list]:
    """Refinement from a trained detector's landmark poses (Beer-Lambert style, the pipeline's
    landmark gate) on the independent-renderer recordings of the example subject and of the same
    CT with its header rotated, with the pipeline's refinement stage (tracking on). Errors after
    refinement over the frames it passed, and over those with the bone inside both fields."""
    import copy
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from independent_recordings import SCENARIO_NAMES, build, recording_folder

    from fluororeg.inference.detector import LandmarkDetector
    from fluororeg.io.recording import open_recording
    from fluororeg.pipeline.evaluate import evaluate_poses
    from fluororeg.pipeline.quality import REGISTERED_STATUSES
    from fluororeg.pipeline.register import PipelineOptions, register_recording
    from fluororeg.simulation.subjects import independent_subjects

    subjects = independent_subjects()
    det = LandmarkDetector(Path(args.models) / "detector.onnx", subject=subjects["example"])
    rot = copy.copy(det)
    rot.subject_fingerprint = subjects["example_rotated_header"].fingerprint
    n = args.independent_frames
    names = ("example", "example_rotated_header")
    build(args.independent_dir, n, names, SCENARIO_NAMES)
    acc = {k: [] for k in ("lm_ang", "lm_pos", "ang", "pos", "reg", "inside", "ov_ang", "ov_pos", "ov_reg",
                           "checked", "twin_passed", "twin", "ambiguous")}
    seconds, frames = 0.0, 0
    for name, detector in zip(names, (det, rot)):
        subject = subjects[name]
        for scen in SCENARIO_NAMES:
            folder = recording_folder(args.independent_dir, name, scen, n)
            rec, truth = open_recording(folder), np.load(folder / "truth.npz")
            res = register_recording(rec, subject, detector, None, PipelineOptions(style="log", refine=False),
                                     progress=False)
            t = time.perf_counter()
            poses, status, cols = refine_stage.refine_recording_poses(rec, subject, res.batch.poses, res.status)
            acc["checked"].append(np.isin(status, ("refined", "ambiguous_depth")))  # held back, then passed
            acc["twin_passed"].append(np.isfinite(cols["refine_twin_similarity"]) | (status == "ambiguous_depth"))
            acc["twin"].append(cols["refine_twin_chosen"]), acc["ambiguous"].append(status == "ambiguous_depth")
            seconds += time.perf_counter() - t
            frames += len(rec)
            lm = evaluate_poses(res.batch.poses, truth["poses"], landmarks=subject.landmarks_model)
            ev = evaluate_poses(poses, truth["poses"], landmarks=subject.landmarks_model)
            acc["lm_ang"].append(lm.angle_err_deg), acc["lm_pos"].append(lm.position_err_mm)
            acc["ang"].append(ev.angle_err_deg), acc["pos"].append(ev.position_err_mm)
            acc["reg"].append(np.isin(status, REGISTERED_STATUSES)), acc["inside"].append(truth["in_fov"].all(axis=(1, 2)))
            # One view alone: every fourth frame's view (1, 2, 1, ...) declared failed by the input
            # checks (no landmark pose, 'blank_view'), refined against the other after tracking.
            failed = np.zeros((len(rec), 2), bool)
            picked = np.arange(3, len(rec), 4)
            failed[picked, np.arange(len(picked)) % 2] = True
            lm_status = np.where(failed.any(axis=1), "blank_view", res.status)
            lm_poses = np.where(failed.any(axis=1)[:, None], np.nan, res.batch.poses)
            ov_poses, ov_status, _ = refine_stage.refine_recording_poses(rec, subject, lm_poses, lm_status,
                                                                         failed_views=failed)
            ov = evaluate_poses(ov_poses[picked], truth["poses"][picked], landmarks=subject.landmarks_model)
            acc["ov_ang"].append(ov.angle_err_deg), acc["ov_pos"].append(ov.position_err_mm)
            acc["ov_reg"].append(ov_status[picked] == refine_stage.ONE_VIEW_STATUS)
    a = {k: np.concatenate(v) for k, v in acc.items()}
    med = lambda v: float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")  # noqa: E731
    started = np.isfinite(a["lm_ang"])
    recovered = a["reg"] & (a["ang"] < 1.0) & (a["pos"] < 1.0)
    off = (a["ang"] > 5.0) | (a["pos"] > 5.0)
    part = {"frames": int(len(a["reg"])), "frames_bone_inside_both_fields": int(a["inside"].sum()),
            "landmark_angle_err_deg_median": med(a["lm_ang"]), "landmark_position_err_mm_median": med(a["lm_pos"]),
            "refined_angle_err_deg_median": med(np.where(a["inside"], a["ang"], np.nan)),
            "refined_position_err_mm_median": med(np.where(a["inside"], a["pos"], np.nan)),
            "refined_angle_err_deg_median_all_frames": med(a["ang"]),
            "refined_position_err_mm_median_all_frames": med(a["pos"]),
            "converged_fraction": float(recovered[started].mean()) if started.any() else float("nan"),
            "registered_fraction": float(a["reg"].mean()), "false_ok_frames": int(np.sum(a["reg"] & off)),
            "refine_s_per_frame_cpu": seconds / max(frames, 1),
            # the depth check (landmark poses the landmark gate held back whose refinement passed):
            # frames checked; whose twin got past the first look and passed the gate; registered at
            # the twin; left ambiguous
            "depth_checked_frames": int(a["checked"].sum()), "depth_twin_passed_frames": int(a["twin_passed"].sum()),
            "depth_twin_chosen_frames": int(a["twin"].sum()),
            "depth_ambiguous_frames": int(a["ambiguous"].sum()),
            "one_view_frames": int(len(a["ov_reg"])), "one_view_registered_fraction": float(a["ov_reg"].mean()),
            "one_view_angle_err_deg_median": med(np.where(a["ov_reg"], a["ov_ang"], np.nan)),
            "one_view_position_err_mm_median": med(np.where(a["ov_reg"], a["ov_pos"], np.nan)),
            "one_view_false_ok_frames": int(np.sum(a["ov_reg"] & ((a["ov_ang"] > 5.0) | (a["ov_pos"] > 5.0))))}
    rows = [("landmark starts (trained detector, independent recordings): landmark angle / position median",
             part["landmark_angle_err_deg_median"], f"deg / {part['landmark_position_err_mm_median']:.3g} mm"),
            ("  refined, bone inside both fields: angle / position median", part["refined_angle_err_deg_median"],
             f"deg / {part['refined_position_err_mm_median']:.3g} mm"),
            ("  refined, all frames it passed: angle / position median", part["refined_angle_err_deg_median_all_frames"],
             f"deg / {part['refined_position_err_mm_median_all_frames']:.3g} mm"),
            ("  converged (< 1 deg and < 1 mm, of frames with a landmark pose)", part["converged_fraction"], ""),
            ("  registered; frames > 5 deg or 5 mm off among them", part["registered_fraction"],
             f"; {part['false_ok_frames']} false ok"),
            ("  time per frame pair (the whole stage: reading, undistorting, refining)", part["refine_s_per_frame_cpu"],
             "s"),
            ("  depth check: held-back landmark poses checked", part["depth_checked_frames"],
             f"; twin past the first look and the gate {part['depth_twin_passed_frames']}, registered at the twin "
             f"{part['depth_twin_chosen_frames']}, ambiguous_depth {part['depth_ambiguous_frames']}"),
            ("  one view alone (every 4th frame, the other view declared failed): registered",
             part["one_view_registered_fraction"], f"of {part['one_view_frames']}; {part['one_view_false_ok_frames']} "
                                                   "> 5 deg or 5 mm off"),
            ("  one view alone: angle / position median", part["one_view_angle_err_deg_median"],
             f"deg / {part['one_view_position_err_mm_median']:.3g} mm")]
    return part, rows


if __name__ == "__main__":
    main()
