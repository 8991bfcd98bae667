"""Long recordings: memory and throughput of ``fluororeg register``'s pipeline over 10,000
frame pairs (--quick: 1,000).

    python benchmarks/bench_long.py --quick --json out/bench/long.json

The recording is streamed: a handful of distinct frame pairs of the headsq subject are
simulated once (cone beam, 192 x 192 px; ``--size``) and the recording's image sequences hand
them out in turn, frame i being pair i mod K with its own small noise, rounded to whole grey levels
as a video's 8-bit frames are (nothing holds the 10,000
frames).
The detector is the tests' soft-argmax spot detector (a real ONNX model of constant cost, no
training; its poses are not accurate and are not meant to be: nearly every frame's refinement
stops after its first level, ``moved_far``, so this run's refinement costs far less than a real
recording's). ``--trained-detector``: instead, a detector trained for the example subject (e.g.
``out/demo/models/detector.onnx``) on frames of the example subject (the demo's field of view):
its landmark poses lie near the truth and the refinement runs its whole course, as in a lab's
recording. That run is the one for ``register``'s end-to-end speed. The pipeline runs as
``register`` does (log style, detection chunks written to a run folder, registration, quality
gate, refinement on ``--refine-device`` (``off``: none), poses.csv). Reported: the registered
frames and how many of them are more than 5 deg or 5 mm off the simulated truth
(``registered_false_5deg_5mm``: the spot detector's poses are far off, so this tests the gate's
honesty; ``registered_err_*_median``), RSS (MB) at the
start of the pipeline, at the middle frame and at the end, the peak RSS, frames/s end to end,
the wall-clock of each stage per frame pair (``stage_ms_per_pair``, from
``RecordingResult.stage_seconds``) and its CPU time over all threads (``stage_cpu_ms_per_pair``:
near ``cpus`` times the wall-clock, a stage keeps every core busy, so with the refinement on a GPU
its host work bounds the rate), ``rss_growth_mb`` (start to end, warm-up included: the ONNX
session's and the solver's first allocations, the QC figure) and ``rss_growth_mb_10k``:
the growth of RSS during the last pass over the frames (detection's, which also gathers the
input checks' figures, or the refinement's when it refines), the least-squares slope of RSS against frame
index from a quarter of the way on, times 10,000 (steady state: what 10,000 more frames add). ``rss_middle`` is taken at
the middle frame of that pass. Also the input checks' per-frame figures (thumbnails and
percentiles, ``input_check_statistics_us_per_frame``: the core on all cores) against their NumPy
reference (``input_check_statistics_reference_us_per_frame``), on the simulated frames.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import best_time, parser, report

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class StreamedSequence:
    """An image sequence of ``n`` frames cycling through ``frames`` [K, H, W] with per-frame noise
    (frame i: ``frames[i % K]`` plus noise field ``i % NOISE_FIELDS`` of a bank made once, so a
    read costs an addition, not the drawing of a frame's noise; rounded and clipped to 8-bit grey
    levels); ``on_frame(i)`` is called for
    every frame read (RSS sampling), in order: the sequence is read on one thread, as a video."""

    NOISE_FIELDS = 17  # prime: with K = 8 distinct frames, 136 distinct images

    def __init__(self, frames: np.ndarray, n: int, seed: int, on_frame=None):
        self.frames, self.n, self.on_frame = frames, n, on_frame
        rng = np.random.default_rng(seed)
        self.noise = rng.normal(0.0, 1.0, (self.NOISE_FIELDS,) + frames.shape[1:]).astype(np.float32)
        self.frame_numbers = np.arange(n, dtype=np.int64)
        self.frame_numbers.flags.writeable = False
        self.frame_rate_hz = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.n:
            raise IndexError(f"frame {i} out of range for {self.n} frames")
        if self.on_frame is not None:
            self.on_frame(i)
        img = self.frames[i % len(self.frames)] + self.noise[i % self.NOISE_FIELDS]
        np.rint(img, out=img)  # whole grey levels, as a video's 8-bit frames hold
        return np.clip(img, 0, 255, out=img)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=None, help="frame pairs (default 10,000; --quick 1,000)")
    p.add_argument("--distinct", type=int, default=8, help="distinct simulated frame pairs the stream cycles through")
    p.add_argument("--size", type=int, default=192,
                   help="frame side, px (default 192; the pixel pitch scales so that the field of view stays)")
    p.add_argument("--detector", type=Path, default=None,
                   help="the spot detector's ONNX file, written there when absent (made with the onnx package, "
                        "which a machine without it can be spared by carrying the file)")
    p.add_argument("--trained-detector", type=Path, default=None,
                   help="a detector ONNX trained for the example subject (e.g. out/demo/models/detector.onnx): frames "
                        "of the example subject instead of headsq, registered near their truth (refinement runs its "
                        "whole course, as in a real recording; needs the example CT)")
    p.add_argument("--refine-device", choices=["auto", "cpu", "cuda", "off"], default="auto",
                   help="where the refinement renders (PipelineOptions.refine_device); off: no refinement (the "
                        "spot detector's poses are far off, so nearly every frame ends moved_far: about 35 ms per "
                        "frame pair on 2 cores)")
    args = p.parse_args()
    n = args.frames or (1000 if args.quick else 10000)
    if args.quick:
        print(f"--quick: {n} frame pairs instead of 10,000 (rss_growth_mb_10k is scaled to 10,000)")
    if n < 2:
        sys.exit("bench_long: --frames must be at least 2")
    if not 64 <= args.size <= 2048:
        sys.exit(f"bench_long: --size {args.size}: expected a frame side of 64 to 2048 px")

    from fluororeg.inference.detector import LandmarkDetector
    from fluororeg.io.recording import Recording, open_recording
    from fluororeg.io.volume_formats import load_volume
    from fluororeg.pipeline.register import PipelineOptions, register_recording
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording
    from fluororeg.simulation.subjects import extreme_points_subject
    from fluororeg.subject.example import headsq_path

    trained = args.trained_detector is not None
    if trained:
        from fluororeg.subject.subject import example_subject

        if not args.trained_detector.is_file():
            sys.exit(f"bench_long: --trained-detector {args.trained_detector} is not a file")
        subject = example_subject()
        pitch = 0.8 * 512 / args.size  # the demo's field of view (a 41 cm intensifier)
    else:
        hp = headsq_path()
        if hp is None:
            sys.exit("bench_long: ../shared/data/headsq is not available")
        subject = extreme_points_subject(load_volume(hp))
        pitch = 1.6 * 192 / args.size  # the same field of view at every --size
        spec = importlib.util.spec_from_file_location("onnx_builders", ROOT / "tests" / "inference" / "conftest.py")
        builders = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(builders)

    with tempfile.TemporaryDirectory(prefix="bench_long_") as tmp:
        tmp = Path(tmp)
        geometry = default_dual_views(args.size, args.size, pitch)
        src = simulate_recording(subject, tmp / "src", n_frames=args.distinct, views=geometry, seed=5)
        small = open_recording(src)
        views = [np.stack([small.sequences[k][i] for i in range(len(small))]) for k in range(2)]
        # The input checks' per-frame figures (thumbnails, percentiles): the core's FrameStatistics
        # on all cores against its NumPy reference, on these frames (256 of them, cycled).
        from fluororeg import _core
        from fluororeg._reference.picture import frame_statistics as reference_statistics

        stack = np.resize(views[0].astype(np.float32), (256,) + views[0].shape[1:])
        t_core = best_time(lambda: _core.frame_statistics(stack, 64, None, 1, 0), 3) / len(stack)
        t_ref = best_time(lambda: reference_statistics(stack[:32], 64), 2) / 32
        det_path = args.trained_detector or args.detector or tmp / "det.onnx"
        if not det_path.exists():
            det_path.parent.mkdir(parents=True, exist_ok=True)
            builders.spot_detector(det_path, 32, list(subject.landmark_names), pairs=subject.pairs,
                                   fingerprint=subject.fingerprint, crop_pixel_mm=2.0)
        detector = LandmarkDetector(det_path, subject=subject)

        samples = {}
        timeline = []

        def on_frame(i: int) -> None:
            if i == n // 2:  # the last pass over the frames (detection's, or the refinement's) wins
                samples["middle"] = rss_mb()
            if i % max(1, n // 20) == 0:
                timeline.append((i, round(rss_mb(), 1)))

        seqs = (StreamedSequence(views[0], n, 1, on_frame), StreamedSequence(views[1], n, 2))
        rec = Recording(seqs, small.geometry, None, None)
        refine = args.refine_device != "off"
        opts = PipelineOptions(style="log", min_visible=6 if trained else 4, num_threads=0, refine=refine,
                               refine_device=args.refine_device if refine else "cpu",
                               crop_pixel_mm=(detector.crop_pixel_mm or 2.0) if trained else 2.0,
                               # the example CT's index axes need Autoscoper's VolumeFlip [0, 0, 1]
                               # for poses.tra (a lab's run writes it)
                               autoscoper_flip=(0, 0, 1) if trained else (0, 0, 0))
        samples["start"] = rss_mb()
        t0 = time.perf_counter()
        out = register_recording(rec, subject, detector, None, opts, out_dir=tmp / "run", progress=False)
        seconds = time.perf_counter() - t0
        samples["end"] = rss_mb()
        assert out.poses.shape == (n, 6) and (tmp / "run" / "poses.csv").exists()
        statuses = {s: int(c) for s, c in zip(*np.unique(out.status, return_counts=True))}
        # The registered frames against the truth (frame i shows pair i mod K): the spot detector's
        # starts are far off, so its run tests the gate's honesty more than precision.
        from fluororeg.core.registration import pose_errors

        truth = np.load(src / "truth.npz")["poses"][np.arange(n) % args.distinct]
        registered = np.isfinite(out.poses).all(axis=1)
        err_deg, err_mm = pose_errors(out.poses[registered], truth[registered]) if registered.any() else ([], [])
        false = int(np.sum((np.asarray(err_deg) > 5) | (np.asarray(err_mm) > 5)))

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    growth = samples["end"] - samples["start"]
    # The last pass over the frames: RSS against frame index from a quarter of the way on (past
    # the warm-up), least-squares slope scaled to 10,000 frames. A pass is a run of increasing
    # frame indices over at least half the recording (the QC figures read a few frames at the end).
    bounds = [k for k in range(len(timeline)) if k == 0 or timeline[k][0] < timeline[k - 1][0]] + [len(timeline)]
    passes = [timeline[a:b] for a, b in zip(bounds, bounds[1:]) if timeline[b - 1][0] - timeline[a][0] >= n // 2]
    last = np.array(passes[-1] if passes else timeline, dtype=float)
    late = last[last[:, 0] >= n // 4]
    growth_10k = float(np.polyfit(late[:, 0], late[:, 1], 1)[0] * 10000) if len(late) >= 2 else float("nan")
    rows = [("frames", n, "frame pairs"), ("registered", int(registered.sum()), "frame pairs"),
            ("registered_false_5deg_5mm", false, "registered frames more than 5 deg or 5 mm off"),
            ("rss_start", samples["start"], "MB"),
            ("rss_middle", samples.get("middle", float("nan")), "MB"), ("rss_end", samples["end"], "MB"),
            ("rss_peak", peak, "MB"), ("rss_growth", growth, "MB"),
            ("rss_growth_mb_10k", growth_10k, "MB per 10,000 frames (last pass, slope)"),
            ("frames_per_s", n / seconds, "frame pairs/s end to end"), ("seconds", seconds, "s")]
    rows += [("input-check statistics per frame, core (all cores)", t_core * 1e6, "us"),
             ("input-check statistics per frame, NumPy reference", t_ref * 1e6, "us"),
             ("  speed-up of the core", t_ref / t_core, "x")]
    stage_ms = {name: 1e3 * t / n for name, t in out.stage_seconds.items()}
    stage_cpu_ms = {name: 1e3 * t / n for name, t in out.stage_cpu_seconds.items()}
    rows += [(f"stage {name}", ms, f"ms per frame pair (CPU time {stage_cpu_ms[name]:.4g} ms, all threads)")
             for name, ms in stage_ms.items()]
    results = {"frames": n, "registered": int(registered.sum()), "registered_false_5deg_5mm": false,
               "registered_err_deg_median": float(np.median(err_deg)) if len(err_deg) else None,
               "registered_err_mm_median": float(np.median(err_mm)) if len(err_mm) else None,
               "quick": bool(args.quick), "rss_start_mb": samples["start"],
               "rss_middle_mb": samples.get("middle"), "rss_end_mb": samples["end"], "rss_peak_mb": peak,
               "rss_growth_mb": growth, "rss_growth_mb_10k": growth_10k, "frames_per_s": n / seconds,
               "seconds": seconds, "statuses": statuses, "rss_timeline_mb": timeline,
               "stage_ms_per_pair": stage_ms, "stage_cpu_ms_per_pair": stage_cpu_ms,
               "cpus": os.cpu_count(), "refine_device": args.refine_device,
               "input_check_statistics_us_per_frame": t_core * 1e6,
               "input_check_statistics_reference_us_per_frame": t_ref * 1e6,
               "detector": "trained" if trained else "spot",
               "detector_providers": detector.model.session.get_providers(),  # onnxruntime's, in use
               "setup": (f"example subject, {args.size} px cone-beam frames cycled with noise, trained detector "
                         f"{args.trained_detector.name}, log style" if trained else
                         f"headsq subject, {args.size} px cone-beam frames cycled with noise, spot detector (32 px), "
                         "log style")}
    report(f"long recording: {n} frame pairs through the register pipeline", rows, results, args.json)


if __name__ == "__main__":
    main()
