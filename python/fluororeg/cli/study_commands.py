"""``fluororeg study``: many subjects and recordings from one manifest, on Dask.

    fluororeg study init FOLDER [--out MANIFEST] [--force]
    fluororeg study check MANIFEST
    fluororeg study run MANIFEST [--scheduler ADDRESS] [--workers N] [--out DIR] [--progress-every S]

``init`` writes a manifest from a folder tree (``FOLDER/subjects/<subject>/`` with
``subject.json`` or a CT and a landmark file; ``FOLDER/recordings/<subject>/<recording>/`` with
``recording.json``); ``check`` validates the manifest and opens every file it names, listing
every problem; ``run`` builds each subject's models once and registers every recording as a
Dask task graph (a local cluster by default). The manifest format: ``docs/study.md``. Only
``run`` needs Dask (``pip install fluororeg[study]``); this module does not import it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

__all__ = ["add_parser", "run", "init_manifest"]

_CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npz")
_LANDMARK_SUFFIXES = (".mrk.json", ".fcsv", ".csv")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``study`` (with ``init``, ``check``, ``run``) to the ``fluororeg`` sub-commands."""
    p = subparsers.add_parser("study", help="many subjects and recordings from one manifest, on Dask",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="study_command", required=True)
    i = sub.add_parser("init", help="write a study manifest from a folder tree (subjects/, recordings/)")
    i.add_argument("folder", help="folder with subjects/<subject>/ and recordings/<subject>/<recording>/")
    i.add_argument("--out", help="manifest to write (default FOLDER/study.toml)")
    i.add_argument("--force", action="store_true", help="overwrite an existing manifest")
    c = sub.add_parser("check", help="validate a manifest and every file it names, listing every problem")
    c.add_argument("manifest", help="study manifest (TOML)")
    r = sub.add_parser("run", help="build the subjects' models and register every recording (Dask)")
    r.add_argument("manifest", help="study manifest (TOML)")
    r.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://host:8786 "
                                                         "(default: a local cluster)")
    r.add_argument("--workers", type=int, help="local cluster: worker processes (default: one per core)")
    r.add_argument("--out", help="output folder (default: [study] out of the manifest, else out/study/<name>)")
    r.add_argument("--progress-every", type=float, metavar="S", help="seconds between progress lines "
                                                                      "(default: the manifest's, 10)")
    p.set_defaults(handler=run, resumes=True)
    return p


def run(args: argparse.Namespace) -> int:
    return {"init": _cmd_init, "check": _cmd_check, "run": _cmd_run}[args.study_command](args)


# ---------------------------------------------------------------------------------------- init
def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _clean_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-")
    return name or "x"


def _find(folder: Path, suffixes) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))


def init_manifest(folder, out=None, *, force: bool = False) -> tuple[Path, list[str]]:
    """Write a manifest for the tree under ``folder`` (see the module docstring); returns its
    path and the problems found (entries that could not be described are left out, with a
    reason)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"study folder '{root}' does not exist")
    path = Path(out) if out is not None else root / "study.toml"
    if path.exists() and not force:
        raise FileExistsError(f"'{path}' exists: pass --force to overwrite it")
    base = path.resolve().parent

    def rel(p: Path) -> str:
        return Path(os.path.relpath(p.resolve(), base)).as_posix()

    problems: list[str] = []
    subj_root, rec_root = root / "subjects", root / "recordings"
    for needed in (subj_root, rec_root):
        if not needed.is_dir():
            problems.append(f"'{needed}' is missing: expected subjects/<subject>/ and recordings/<subject>/<recording>/")
    if problems:
        raise FileNotFoundError("; ".join(problems))
    subjects: list[str] = []
    lines = ["# fluororeg study manifest, written by `fluororeg study init` (format: docs/study.md).",
             "# Review the settings below; `fluororeg study check` validates it and every file it names.", "",
             "[study]", f"name = {_toml_str(_clean_name(root.resolve().name))}", "retries = 2",
             "threads_per_task = 1", "progress_every_s = 10", "",
             "[settings]", "device = \"cpu\"", "",
             "[settings.dataset]          # the paper's size; cone-beam DRRs at the recordings' source distances",
             "n_train = 9251", "n_test = 500", "image_size = 128", "pixel_mm = 2.0", "projection = \"cone\"", "",
             "[settings.detector_training]", "preset = \"fast\"", "",
             "[settings.style_training]", "preset = \"fast\"", "steps = 6000", "",
             "[settings.register]", "style = \"translate\"", ""]
    for d in sorted(p for p in subj_root.iterdir() if p.is_dir()):
        name = _clean_name(d.name)
        if (d / "subject.json").is_file():
            lines += ["[[subject]]", f"name = {_toml_str(name)}", f"folder = {_toml_str(rel(d))}", ""]
        else:
            cts = _find(d, _CT_SUFFIXES)
            lms = [p for p in _find(d, _LANDMARK_SUFFIXES) if p not in cts]
            cts = [p for p in cts if p not in lms]
            if len(cts) != 1 or len(lms) != 1:
                problems.append(f"subject folder '{d}': expected subject.json, or one CT ({', '.join(_CT_SUFFIXES)}) "
                                f"and one landmark file ({', '.join(_LANDMARK_SUFFIXES)}); found {len(cts)} CT(s) "
                                f"and {len(lms)} landmark file(s): left out")
                continue
            lines += ["[[subject]]", f"name = {_toml_str(name)}", f"ct = {_toml_str(rel(cts[0]))}",
                      f"landmarks = {_toml_str(rel(lms[0]))}", ""]
        subjects.append(d.name)
    n_rec = 0
    for d in sorted(p for p in rec_root.iterdir() if p.is_dir()):
        if d.name not in subjects:
            problems.append(f"recordings folder '{d}' names no subject of subjects/: left out")
            continue
        for rec in sorted(p for p in d.iterdir() if p.is_dir()):
            if not (rec / "recording.json").is_file():
                problems.append(f"'{rec}' has no recording.json: left out")
                continue
            lines += ["[[recording]]", f"name = {_toml_str(_clean_name(d.name + '_' + rec.name))}",
                      f"subject = {_toml_str(_clean_name(d.name))}", f"folder = {_toml_str(rel(rec))}", ""]
            n_rec += 1
    if not subjects or not n_rec:
        raise ValueError(f"'{root}' holds {len(subjects)} usable subject(s) and {n_rec} recording(s): nothing to "
                         "study" + (f" ({'; '.join(problems)})" if problems else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path, problems


def _cmd_init(args) -> int:
    path, problems = init_manifest(args.folder, args.out, force=args.force)
    for p in problems:
        print(f"  warning: {p}")
    print(f"wrote {path}; check it with: fluororeg study check {path}")
    return 0


# ---------------------------------------------------------------------------------------- check
def _cmd_check(args) -> int:
    from fluororeg.study.inputs import check_study_files
    from fluororeg.study.manifest import ManifestError, load_study

    try:
        study = load_study(args.manifest)
        problems = check_study_files(study)
    except ManifestError as exc:  # and the files of the entries that parsed, in the same list
        problems = exc.problems + [p for p in (check_study_files(exc.partial) if exc.partial else [])
                                   if p not in exc.problems]
        study = None
    if problems:
        print(f"{len(problems)} problem(s) in study manifest '{args.manifest}':")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"ok: {study.name}: {len(study.subjects)} subject(s), {len(study.recordings)} recording(s); every file "
          "the manifest names reads")
    return 0


# ---------------------------------------------------------------------------------------- run
def _cmd_run(args) -> int:
    from fluororeg.study.run import require_dask

    require_dask()  # one line naming the extra, before anything else
    from fluororeg.study.manifest import ManifestError, load_study
    from fluororeg.study.run import run_study

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers {args.workers}: expected at least 1")
    if args.scheduler is not None and args.workers is not None:
        raise ValueError("--workers sizes the local cluster: drop it with --scheduler (the cluster has its workers)")
    if args.progress_every is not None and not args.progress_every > 0:
        raise ValueError(f"--progress-every {args.progress_every}: expected a positive number of seconds")
    try:
        study = load_study(args.manifest)
        result = run_study(study, args.out, scheduler=args.scheduler, workers=args.workers,
                           progress_every_s=args.progress_every)
    except ManifestError as exc:
        print(f"fluororeg study: {len(exc.problems)} problem(s) in study manifest '{exc.path}' (nothing was run):",
              file=sys.stderr)
        for p in exc.problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    return 0 if result.ok else 1
