"""A study on Dask: frame pairs/s of ``fluororeg study run`` with 1 and 2 local workers on the
same study (registration only: the models are built once beforehand, by a study run), and
the ratio.

    python benchmarks/bench_study.py --quick --json out/bench/study.json [--work out/bench_study]

The study: the headsq CT (``../shared/data``) with six landmarks as one subject with a small
detector trained on a cone-beam DRR dataset (built once by the study itself into
``<work>/models``), and simulated recordings of it (--quick: 4 of 8 frame pairs at 256 px;
else 8 of 24 at 512 px). Each timed run starts from an empty output folder, on a fresh
``LocalCluster`` whose workers have imported fluororeg and onnxruntime (cluster start and
imports are not timed; loading the networks in each task is); 1 and 2 workers alternate, and
the best of 2 rounds counts (--quick: 1 round). The detector is tiny (a few
epochs on a few hundred DRRs): the figures are throughput, its accuracy is meaningless. Figures:
``study_fps_1worker``, ``study_fps_2workers`` (frame pairs registered / seconds from
submission to the last task) and ``study_speedup`` (their ratio). Run it on a quiet machine:
the workers are processes and need a free core each.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parser, report  # noqa: E402

SETTINGS = """
[settings.dataset]
n_train = 192
n_test = 16
image_size = 64
pixel_mm = 4.0
shard_size = 64

[settings.detector_training]
arch = "heatmap"
width = 8
input_size = 64
epochs = 3
batch_size = 16

[settings.register]
style = "log"
min_visible = 4
chunk = 8
"""


def _subject_folder(root: Path) -> Path:
    from fluororeg.io.volume_formats import load_volume
    from fluororeg.subject.example import headsq_path
    from fluororeg.simulation.subjects import extreme_points_subject
    from fluororeg.subject.subject import save_subject

    p = headsq_path()
    if p is None:
        raise SystemExit("../shared/data/headsq is not available: the benchmark's subject is missing")
    folder = root / "subjects" / "headsq"
    if (folder / "subject.json").exists():
        return folder
    subject = extreme_points_subject(load_volume(p))
    save_subject(subject, folder, ct_filename="ct.nrrd")
    return folder


def _warm_up() -> None:
    """Import on a worker what a register task uses (the first task would pay for it)."""
    import PIL.Image  # noqa: F401
    import onnxruntime  # noqa: F401
    import scipy.ndimage  # noqa: F401

    import fluororeg.calibration.geometry_file  # noqa: F401
    import fluororeg.inference.crops  # noqa: F401
    import fluororeg.io.recording  # noqa: F401
    import fluororeg.pipeline.evaluate  # noqa: F401
    import fluororeg.pipeline.register  # noqa: F401
    import fluororeg.study.graph  # noqa: F401
    import fluororeg.study.inputs  # noqa: F401
    import fluororeg.training.detector_train  # noqa: F401
    import fluororeg.training.translator_train  # noqa: F401


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--work", default="out/bench_study", help="work folder (subject, recordings, models, runs)")
    args = p.parse_args()
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording
    from fluororeg.study.manifest import load_study
    from fluororeg.study.run import run_study, start_local_cluster
    from fluororeg.subject.subject import load_subject

    work = Path(args.work)
    n_rec, n_frames, size = (4, 8, 256) if args.quick else (8, 24, 512)
    folder = _subject_folder(work)
    subject = load_subject(folder)
    views = default_dual_views(size, size, pitch=409.6 / size)
    scenarios = ["walking", "flexion_extension", "lateral_bending", "axial_rotation"]
    recs = []
    for r in range(n_rec):
        rec = work / "recordings" / f"rec{r}_{n_frames}_{size}"
        if not (rec / "recording.json").exists():
            print(f"simulating {rec.name} ({n_frames} frame pairs of {size} px)", flush=True)
            simulate_recording(subject, rec, scenario=scenarios[r % 4], n_frames=n_frames, views=views, seed=r)
        recs.append(rec)

    def manifest(name: str, detector: str | None = None, recordings=recs) -> Path:
        lines = [f'[study]\nname = "{name}"\nprogress_every_s = 30\n', SETTINGS, "[[subject]]", 'name = "headsq"',
                 f'folder = "{folder.resolve()}"'] + ([f'detector = "{detector}"'] if detector else []) + [""]
        for rec in recordings:
            lines += ["[[recording]]", f'name = "{rec.name}"', 'subject = "headsq"', f'folder = "{rec.resolve()}"', ""]
        path = work / f"{name}.toml"
        path.write_text("\n".join(lines))
        return path

    print("building the subject's models (once; reused by later runs)", flush=True)
    built = run_study(load_study(manifest("models", recordings=recs[:1])), work / "models", workers=1,
                      say=lambda m: None)
    if not built.ok:
        raise SystemExit(f"building the models failed: {[(o.key, o.error) for o in built.failures]}")
    detector = built.outcomes["models/headsq"].result["detector"]
    study = load_study(manifest("timed", detector))
    results = {"recordings": n_rec, "frames_per_recording": n_frames, "image_px": size,
               "note": "local Dask cluster, one single-threaded worker process per core; wall-clock"}
    rows = []
    poses = {}
    best = {1: None, 2: None}
    rounds = 1 if args.quick else 2
    for workers in [1, 2] * rounds:  # alternating, best of the rounds: the machine's load drifts
        out = work / f"run_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        cluster, client = start_local_cluster(workers)
        try:
            client.run(_warm_up)  # imports on every worker: the timing is of the study's work
            run = run_study(study, out, client=client, say=lambda m: None)
        finally:
            client.close()
            cluster.close()
        if not run.ok:
            raise SystemExit(f"the study failed with {workers} worker(s): {[(o.key, o.error) for o in run.failures]}")
        print(f"  {workers} worker(s): {run.frame_pairs_per_s:.2f} frame pairs/s ({run.seconds:.1f} s)", flush=True)
        if best[workers] is None or run.seconds < best[workers].seconds:
            best[workers] = run
        from fluororeg.io.poses import read_poses_csv

        poses[workers] = np.concatenate([read_poses_csv(out / "recordings" / r.name / "poses.csv")["poses"]
                                         for r in recs])
    for workers, run in best.items():
        key = "study_fps_1worker" if workers == 1 else "study_fps_2workers"
        results[key] = run.frame_pairs_per_s
        results[f"study_seconds_{workers}"] = run.seconds
        rows.append((f"{workers} worker(s): frame pairs/s", run.frame_pairs_per_s, "frame pairs/s"))
        rows.append((f"{workers} worker(s): study time", run.seconds, "s"))
    results["rounds"] = rounds
    results["study_speedup"] = results["study_fps_2workers"] / results["study_fps_1worker"]
    results["same_poses"] = bool(np.allclose(poses[1], poses[2], atol=1e-6, equal_nan=True))
    rows.append(("speed-up, 2 workers vs 1", results["study_speedup"], "x"))
    report(f"study of {n_rec} recordings x {n_frames} frame pairs ({size} px), registration only",
           rows, results, args.json)


if __name__ == "__main__":
    main()
