"""Rebuild the test recordings rendered independently of fluororeg's renderer (plastimatch).

    python benchmarks/independent_recordings.py [--out out/independent] [--frames 24] [--quick]

For each subject (the example subject; the same with its CT header rotated 180 deg about the
vertical axis; the shared headsq CT with proposed landmarks) and each motion scenario
(walking, flexion_extension, lateral_bending, axial_rotation) it simulates a recording of
``--frames`` frame pairs with :func:`fluororeg.simulation.plastimatch_drr.simulate_independent_recording`
(plastimatch Siddon DRRs, 512 px intensifiers 112 deg apart, intensifier effects unlike the
training ones) into ``<out>/<subject>/<scenario>_<frames>``. Complete recordings (recording.json
present, same frame count and effects) are skipped. ``--quick``: 6 frame pairs. Prints and (``--json``)
writes the rendering seconds per image. ``bench_pipeline.py --independent`` registers them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SCENARIO_NAMES = ("walking", "flexion_extension", "lateral_bending", "axial_rotation")
SUBJECT_NAMES = ("example", "example_rotated_header", "headsq")
QUICK_FRAMES = 6


def recording_folder(root, subject_name: str, scenario: str, n_frames: int) -> Path:
    return Path(root) / subject_name / f"{scenario}_{n_frames}"


def recording_seed(subject_name: str, scenario: str) -> int:
    """Seeds unlike those of the training (200+, 300) and bench_pipeline's (1000+) recordings; the
    rotated-header subject shares the example's seeds, so both see the same motion."""
    base = {"example": 5000, "example_rotated_header": 5000, "headsq": 6000}[subject_name]
    return base + 10 * SCENARIO_NAMES.index(scenario)


def is_complete(folder: Path, n_frames: int) -> bool:
    """A finished recording of ``n_frames`` frame pairs made with today's default effects."""
    from dataclasses import asdict

    from fluororeg.simulation.plastimatch_drr import IntensifierEffects

    try:
        truth = json.loads((folder / "truth.json").read_text())
    except (OSError, ValueError):
        return False
    effects = json.loads(json.dumps(asdict(IntensifierEffects())))
    return ((folder / "recording.json").exists() and truth.get("n_frames") == n_frames
            and truth.get("effects") == effects)


def build(root, n_frames: int, subjects=SUBJECT_NAMES, scenarios=SCENARIO_NAMES, progress=print) -> dict:
    """Simulate the missing recordings; returns {subject: {scenario: {folder, seconds_per_image, built}}}."""
    from fluororeg.simulation.plastimatch_drr import plastimatch_available, simulate_independent_recording
    from fluororeg.simulation.subjects import independent_subjects

    if not plastimatch_available():
        raise SystemExit("plastimatch is not installed (apt-get install plastimatch): cannot render the "
                         "independent recordings")
    available = independent_subjects()
    summary: dict = {}
    for name in subjects:
        if name not in available:
            progress(f"[independent] subject {name} is not available (shared data missing): skipped")
            continue
        subject = available[name]
        for scen in scenarios:
            folder = recording_folder(root, name, scen, n_frames)
            built = not is_complete(folder, n_frames)
            if built:
                t0 = time.perf_counter()
                simulate_independent_recording(subject, folder, scenario=scen, n_frames=n_frames,
                                               seed=recording_seed(name, scen))
                progress(f"[independent] {folder}: {time.perf_counter() - t0:.1f} s")
            truth = json.loads((folder / "truth.json").read_text())
            summary.setdefault(name, {})[scen] = {"folder": str(folder), "built": built,
                                                  "seconds_per_image": truth.get("render_seconds_per_image")}
    return summary


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/independent")
    p.add_argument("--frames", type=int, default=24, help="frame pairs per recording")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_FRAMES} frame pairs per recording")
    p.add_argument("--subjects", nargs="+", default=list(SUBJECT_NAMES), choices=SUBJECT_NAMES)
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIO_NAMES), choices=SCENARIO_NAMES)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    n = QUICK_FRAMES if args.quick else args.frames
    if n < 1:
        raise SystemExit(f"--frames {n}: expected at least 1 frame pair")
    summary = build(args.out, n, args.subjects, args.scenarios)
    rows = []
    for name, scen in summary.items():
        for s, entry in scen.items():
            if entry["seconds_per_image"] is not None:
                rows.append((f"{name} {s} ({'rendered now' if entry['built'] else 'existing'})",
                             entry["seconds_per_image"], "s per 512 px image (plastimatch)"))
    if rows:
        report(f"independent recordings in {args.out} ({n} frame pairs each)", rows,
               {"frames": n, "recordings": summary}, args.json)


if __name__ == "__main__":
    main()
