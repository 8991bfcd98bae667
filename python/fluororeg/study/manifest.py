"""The study manifest: many subjects, many recordings, one TOML file (``fluororeg study``).
(About 550 lines: the strict reader checks every table and key of the format in one place.)

A study is read with :func:`load_study` (``tomllib``; Python < 3.11 needs ``tomli``) into a
:class:`Study` of :class:`SubjectSpec` and :class:`RecordingSpec` entries whose settings are
already merged (shared ``[settings.*]`` tables, then the entry's own overrides). The format,
with an example, is documented in ``docs/study.md``; in short::

    [study]                       # optional
    name = "gait-2026"
    retries = 2                   # Dask retries per task before it is reported as failed
    threads_per_task = 1          # native threads of one task (torch, onnxruntime, C++ core)
    progress_every_s = 10

    [settings]                    # shared by every subject and recording
    device = "cpu"                # "cpu" | "cuda" (cuda tasks get the Dask resource GPU=1)
    [settings.dataset]            # fluororeg.dataset.generate.DatasetConfig fields + pose ranges
    [settings.detector_training]  # preset = "fast" | "paper" + DetectorConfig fields
    [settings.style_training]     # preset = "fast" | "paper" + TranslatorConfig fields + every
    [settings.register]           # fluororeg.pipeline.register.PipelineOptions fields

    [[subject]]
    name = "s01"
    folder = "subjects/s01"       # a subject folder (subject.json), or:
    # ct = "ct/s01.nii.gz"; landmarks = "ct/s01.mrk.json"; pairs = [["a_L", "a_R"]]
    # origin = "centroid"; mask_threshold_hu = 300; largest_component = true
    # detector = "models/s01.onnx"; translator = "models/s01_x2d.onnx"   (prebuilt: not trained)
    [subject.dataset]             # overrides, same keys as [settings.dataset] (also
                                  # detector_training, style_training, register, device)

    [[recording]]
    name = "s01_walk1"
    subject = "s01"
    folder = "recordings/s01/walk1"        # with recording.json, or:
    # views = ["v1/", "v2/"]; geometry = "geometry.json" | calibration = {mayacam = [...], pitch_mm = 0.2}
    # frame_rate_hz = 100; reference = "truth.npz"
    [recording.register]          # overrides of [settings.register] (and device)

Relative paths are relative to the manifest's folder. Everything is strict: an unknown key
anywhere is an error naming the key, the table and the file (with a suggestion for typos),
and every problem found is reported at once (:class:`ManifestError`), never only the first.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ManifestError", "Study", "SubjectSpec", "RecordingSpec", "CalibrationSpec", "load_study",
           "parse_study", "dataset_config", "detector_config", "style_config", "pipeline_options",
           "SECTION_KEYS"]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # matched whole (fullmatch): it names a folder
DEVICES = ("cpu", "cuda")

# Keys of the settings tables (checked against the dataclasses they feed, see _setting_keys).
_POSE_KEYS = ("azimuth_deg", "elevation_deg", "roll_deg", "translation_mm", "scale", "superior_axis",
              "anterior_axis")
_STUDY_KEYS = ("name", "out", "retries", "threads_per_task", "progress_every_s")
_SETTINGS_TABLES = ("dataset", "detector_training", "style_training", "register")
_SUBJECT_KEYS = ("name", "folder", "ct", "landmarks", "pairs", "origin", "mask_threshold_hu", "largest_component",
                 "detector", "translator", "device") + _SETTINGS_TABLES
_RECORDING_KEYS = ("name", "subject", "folder", "views", "geometry", "calibration", "frame_rate_hz", "reference",
                   "device", "register")
_CALIBRATION_KEYS = ("mayacam", "pitch_mm", "plates", "bead_radius_px", "polarity", "spacing_mm")


def _setting_keys() -> dict[str, tuple[str, ...]]:
    """Allowed keys per settings table: the fields of the configuration each one builds."""
    from fluororeg.dataset.generate import DatasetConfig
    from fluororeg.pipeline.register import PipelineOptions
    from fluororeg.training.detector_config import DetectorConfig
    from fluororeg.training.translator_config import TranslatorConfig

    def names(cls, drop=()):
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in drop)

    return {
        "dataset": names(DatasetConfig, ("poses",)) + _POSE_KEYS,
        "detector_training": ("preset",) + names(DetectorConfig, ("augment", "num_threads")),
        "style_training": ("preset", "every") + names(TranslatorConfig),
        "register": names(PipelineOptions, ("num_threads",)),
    }


SECTION_KEYS = {"top": ("study", "settings", "subject", "recording"), "study": _STUDY_KEYS,
                "settings": ("device",) + _SETTINGS_TABLES, "subject": _SUBJECT_KEYS, "recording": _RECORDING_KEYS,
                "calibration": _CALIBRATION_KEYS}


class ManifestError(ValueError):
    """Every problem of a manifest (or of the files it names): ``problems`` is the list;
    ``partial``: the :class:`Study` of the entries that parsed (None: none, or no study at all),
    whose files ``study check`` opens too, so that it lists those problems in the same run."""

    def __init__(self, path, problems: list[str], partial: "Study | None" = None):
        self.path = Path(path)
        self.problems = list(problems)
        self.partial = partial
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in study manifest '{self.path}':\n{lines}")


@dataclass(frozen=True)
class CalibrationSpec:
    """A recording's geometry from calibration files: one MayaCam 2.0 file per view (pixel
    pitch ``pitch_mm``) and optionally one bead-plate image per view (distortion)."""

    mayacam: tuple[Path, Path]
    pitch_mm: float
    plates: tuple[Path, Path] | None = None
    bead_radius_px: float = 4.0
    polarity: str = "dark"
    spacing_mm: float | None = None


@dataclass(frozen=True)
class SubjectSpec:
    name: str
    where: str                                 # "<manifest> [[subject]] #i (name)" for messages
    folder: Path | None = None                 # subject folder (subject.json) ...
    ct: Path | None = None                     # ... or CT + landmarks + options
    landmarks: Path | None = None
    pairs: tuple[tuple[str, str], ...] | None = None   # None: from <stem>_L / <stem>_R names
    origin: Any = "centroid"
    mask_threshold_hu: float = 300.0
    largest_component: bool = True
    detector: Path | None = None               # prebuilt models (not trained)
    translator: Path | None = None
    device: str = "cpu"
    dataset: dict = field(default_factory=dict)            # merged settings
    detector_training: dict = field(default_factory=dict)
    style_training: dict = field(default_factory=dict)
    register: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RecordingSpec:
    name: str
    subject: str
    where: str
    folder: Path | None = None                 # recording folder (recording.json) ...
    views: tuple[Path, Path] | None = None     # ... or two image sequences +
    geometry: Path | None = None               #     a geometry file
    calibration: CalibrationSpec | None = None  #     or calibration files
    frame_rate_hz: float | None = None
    reference: Path | None = None              # reference poses (truth.npz or pose CSV) for QC
    device: str = "cpu"
    register: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    path: Path
    name: str
    subjects: tuple[SubjectSpec, ...]
    recordings: tuple[RecordingSpec, ...]
    out: Path | None = None
    retries: int = 2
    threads_per_task: int = 1
    progress_every_s: float = 10.0
    # [[recording]] entries whose 'subject' names no usable [[subject]] (a manifest problem, so
    # only in a ManifestError's partial study): never run, but `study check` opens their files,
    # so that one check lists those problems too.
    unassigned: tuple[RecordingSpec, ...] = ()

    def subject(self, name: str) -> SubjectSpec:
        for s in self.subjects:
            if s.name == name:
                return s
        raise KeyError(f"no subject {name!r} in {self.path}")

    def recordings_of(self, subject: str) -> list[RecordingSpec]:
        return [r for r in self.recordings if r.subject == subject]


# ====================================================================== configurations
def dataset_config(settings: dict, source_distance_auto=None):
    """A DatasetConfig from merged [dataset] settings; ``source_distance_mm = "auto"`` (the
    default for cone beam) takes ``source_distance_auto`` (a (lo, hi) tuple, from the subject's
    recordings' geometry)."""
    from fluororeg.dataset.generate import DatasetConfig, PoseRanges

    s = dict(settings)
    poses = {k: tuple(s.pop(k)) for k in _POSE_KEYS if k in s}
    if s.get("source_distance_mm", "auto") == "auto":
        s.pop("source_distance_mm", None)
        if s.get("projection", "cone") == "cone" and source_distance_auto is not None:
            s["source_distance_mm"] = tuple(source_distance_auto)
    else:
        s["source_distance_mm"] = tuple(s["source_distance_mm"])
    s.setdefault("projection", "cone")
    return DatasetConfig(poses=PoseRanges(**poses), **s)


def detector_config(settings: dict, threads: int = 1):
    from fluororeg.training.detector_config import preset

    s = dict(settings)
    name = s.pop("preset", "fast")
    if "blocks" in s:
        s["blocks"] = tuple(s["blocks"])
    return preset(name, num_threads=int(threads), **s)


def style_config(settings: dict, dataset_image_size: int):
    """(TranslatorConfig, every): the style translator's training settings; its image size defaults
    to the dataset's."""
    from fluororeg.training.translator_config import TranslatorConfig

    s = dict(settings)
    name = s.pop("preset", "fast")
    every = s.pop("every", 1)
    if not (isinstance(every, int) and not isinstance(every, bool) and every >= 1):
        raise ValueError(f"every = {every!r}: expected an integer >= 1 (every n-th frame)")
    s.setdefault("image_size", int(dataset_image_size))
    return TranslatorConfig.preset(name, **s), every


def pipeline_options(settings: dict, dataset_pixel_mm: float, threads: int = 1):
    """PipelineOptions from merged [register] settings; ``crop_pixel_mm`` defaults to the
    dataset's pixel size (the detector saw that scale); ``num_threads`` is the study's."""
    from fluororeg.pipeline.register import PipelineOptions

    s = dict(settings)
    s.setdefault("crop_pixel_mm", float(dataset_pixel_mm))
    return PipelineOptions(num_threads=int(threads), **s)


def uses_translator(subject: SubjectSpec, recordings: list[RecordingSpec]) -> bool:
    """Whether any recording of the subject registers with style translation (the default)."""
    return any(r.register.get("style", "translate") == "translate" for r in recordings)


# ====================================================================== parsing
def _suggest(key: str, allowed) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_toml(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python < 3.11
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise ImportError("reading a study manifest on Python < 3.11 needs tomli: pip install tomli") from exc
    if not path.is_file():
        raise FileNotFoundError(f"study manifest '{path}' does not exist")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(path, [f"'{path}' is not valid TOML: {exc}"]) from None


class _Parser:
    def __init__(self, path: Path):
        self.path = path
        self.root = path.parent
        self.problems: list[str] = []
        self.keys = _setting_keys()

    def problem(self, where: str, msg: str) -> None:
        line = f"{where}: {msg}"
        if line not in self.problems:  # a value inherited by many entries is one problem
            self.problems.append(line)

    def table(self, value, where: str, allowed) -> dict:
        if not isinstance(value, dict):
            self.problem(where, f"expected a table, got {type(value).__name__} {value!r}")
            return {}
        for k in value:
            if k not in allowed:
                self.problem(where, f"unknown key {k!r}{_suggest(k, allowed)}; allowed: {', '.join(allowed)}")
        return {k: v for k, v in value.items() if k in allowed}

    def path_value(self, value, where: str, key: str) -> Path | None:
        if not isinstance(value, str) or not value.strip():
            self.problem(where, f"{key!r} must be a path (string), got {value!r}")
            return None
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else self.root / p

    def name(self, value, where: str) -> str | None:
        """``value`` if it is a usable [[subject]] / [[recording]] name (it names the output folder)."""
        if not isinstance(value, str) or not NAME_RE.fullmatch(value):
            self.problem(where, f"'name' = {value!r}: expected a name of letters, digits, '_', '-' or '.' (it names "
                                "the output folder)")
            return None
        return value

    def device(self, value, where: str) -> str:
        if value not in DEVICES:
            self.problem(where, f"'device' = {value!r}: expected one of {list(DEVICES)}")
            return "cpu"
        return value

    def settings_tables(self, entry: dict, where: str, names) -> dict[str, dict]:
        out = {}
        for name in names:
            if name in entry:
                label = f"{where[:-1]}.{name}]" if where.endswith("[settings]") else f"{where} [{name}]"
                out[name] = self.table(entry[name], label, self.keys[name])  # [settings.dataset], as written
        return out


def _loc(path: Path, section: str) -> str:
    return f"{path} {section}"


def parse_study(data: dict, path) -> Study:
    """A :class:`Study` from the parsed TOML ``data`` of the manifest at ``path`` (for the
    relative paths and messages). Raises :class:`ManifestError` listing every problem."""
    path = Path(path)
    P = _Parser(path)
    top = P.table(data, str(path), SECTION_KEYS["top"])
    st = P.table(top.get("study", {}), _loc(path, "[study]"), _STUDY_KEYS)
    name = st.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        P.problem(_loc(path, "[study]"), f"'name' must be a non-empty string, got {name!r}")
    out = P.path_value(st["out"], _loc(path, "[study]"), "out") if "out" in st else None
    retries = st.get("retries", 2)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        P.problem(_loc(path, "[study]"), f"'retries' = {retries!r}: expected an integer >= 0")
        retries = 0
    threads = st.get("threads_per_task", 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        P.problem(_loc(path, "[study]"), f"'threads_per_task' = {threads!r}: expected an integer >= 1")
        threads = 1
    every_s = st.get("progress_every_s", 10.0)
    if isinstance(every_s, bool) or not isinstance(every_s, (int, float)) or not (math.isfinite(every_s) and every_s > 0):
        P.problem(_loc(path, "[study]"), f"'progress_every_s' = {every_s!r}: expected a positive number of seconds")
        every_s = 10.0

    settings = P.table(top.get("settings", {}), _loc(path, "[settings]"), SECTION_KEYS["settings"])
    shared = P.settings_tables(settings, _loc(path, "[settings]"), _SETTINGS_TABLES)
    shared_device = P.device(settings.get("device", "cpu"), _loc(path, "[settings]"))

    # ---- subjects
    subjects: list[SubjectSpec] = []
    raw_subjects = top.get("subject", [])
    if not isinstance(raw_subjects, list):
        P.problem(str(path), "'subject' must be an array of tables ([[subject]]), got a single value")
        raw_subjects = []
    for i, raw in enumerate(raw_subjects, 1):
        label = raw.get("name", "?") if isinstance(raw, dict) else "?"
        where = _loc(path, f"[[subject]] #{i} ({label})")
        s = P.table(raw, where, _SUBJECT_KEYS)
        spec = _parse_subject(P, s, where, shared, shared_device)
        if spec is not None:
            subjects.append(spec)
    names = [s.name for s in subjects]
    for n in sorted({n for n in names if names.count(n) > 1}):
        P.problem(str(path), f"subject name {n!r} is used {names.count(n)} times: names must be unique")
    if not raw_subjects:
        P.problem(str(path), "no [[subject]]: a study needs at least one subject")

    # ---- recordings
    recordings: list[RecordingSpec] = []
    raw_recs = top.get("recording", [])
    if not isinstance(raw_recs, list):
        P.problem(str(path), "'recording' must be an array of tables ([[recording]]), got a single value")
        raw_recs = []
    by_name = {s.name: s for s in subjects}
    # [[subject]] entries dropped for a bad name: their recordings point at that problem
    dropped = {raw["name"]: _loc(path, f"[[subject]] #{i} ({raw['name']})") for i, raw in enumerate(raw_subjects, 1)
               if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"] not in by_name}
    unassigned: list[RecordingSpec] = []
    for i, raw in enumerate(raw_recs, 1):
        label = raw.get("name", "?") if isinstance(raw, dict) else "?"
        where = _loc(path, f"[[recording]] #{i} ({label})")
        r = P.table(raw, where, _RECORDING_KEYS)
        spec = _parse_recording(P, r, where, by_name, dropped)
        if spec is not None:
            (recordings if spec.subject in by_name else unassigned).append(spec)
    rnames = [r.name for r in recordings]
    for n in sorted({n for n in rnames if rnames.count(n) > 1}):
        P.problem(str(path), f"recording name {n!r} is used {rnames.count(n)} times: names must be unique "
                             "(they name the output folders)")
    if not raw_recs:
        P.problem(str(path), "no [[recording]]: a study needs at least one recording")
    for s in subjects:
        if not any(r.subject == s.name for r in recordings):
            P.problem(s.where, "no recording names this subject (nothing to register)")

    # ---- settings values: build each configuration once, so that bad values fail here
    for s in subjects:
        _check_configs(P, s, [r for r in recordings if r.subject == s.name], threads, shared)
    study = Study(path=path, name=name if isinstance(name, str) else path.stem, subjects=tuple(subjects),
                  recordings=tuple(r for r in recordings if r.subject in {s.name for s in subjects}), out=out,
                  retries=retries, threads_per_task=threads, progress_every_s=float(every_s),
                  unassigned=tuple(unassigned))
    if P.problems:
        raise ManifestError(path, P.problems, partial=study)
    return study


def _parse_subject(P: _Parser, s: dict, where: str, shared: dict, shared_device: str) -> SubjectSpec | None:
    name = P.name(s.get("name"), where)
    if name is None:
        return None
    kw: dict[str, Any] = {}
    if "folder" in s:
        kw["folder"] = P.path_value(s["folder"], where, "folder")
        for k in ("ct", "landmarks", "pairs", "origin", "mask_threshold_hu", "largest_component"):
            if k in s:
                P.problem(where, f"{k!r} is set together with 'folder': the subject folder's subject.json says it "
                                 "(give either 'folder' or 'ct' + 'landmarks')")
    elif "ct" in s or "landmarks" in s:
        for k in ("ct", "landmarks"):
            if k not in s:
                P.problem(where, f"missing {k!r}: a subject without 'folder' needs 'ct' and 'landmarks'")
            else:
                kw[k] = P.path_value(s[k], where, k)
        if "pairs" in s:
            pairs = s["pairs"]
            if not (isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2
                                                     and all(isinstance(x, str) for x in p) for p in pairs)):
                P.problem(where, f"'pairs' = {pairs!r}: expected [[\"left_name\", \"right_name\"], ...]")
            else:
                kw["pairs"] = tuple(tuple(p) for p in pairs)
        origin = s.get("origin", "centroid")
        if not (origin == "centroid" or (isinstance(origin, list) and len(origin) == 3 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in origin))):
            P.problem(where, f"'origin' = {origin!r}: expected \"centroid\" or [x, y, z] (mm)")
        else:
            kw["origin"] = origin if origin == "centroid" else tuple(float(x) for x in origin)
        t = s.get("mask_threshold_hu", 300.0)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            P.problem(where, f"'mask_threshold_hu' = {t!r}: expected a finite number (HU)")
        else:
            kw["mask_threshold_hu"] = float(t)
        lc = s.get("largest_component", True)
        if not isinstance(lc, bool):
            P.problem(where, f"'largest_component' = {lc!r}: expected true or false")
        else:
            kw["largest_component"] = lc
    else:
        P.problem(where, "expected 'folder' (a subject folder with subject.json) or 'ct' + 'landmarks'")
    for k in ("detector", "translator"):
        if k in s:
            kw[k] = P.path_value(s[k], where, k)
    device = P.device(s.get("device", shared_device), where)
    own = P.settings_tables(s, where, _SETTINGS_TABLES)
    merged = {t: {**shared.get(t, {}), **own.get(t, {})} for t in _SETTINGS_TABLES}
    return SubjectSpec(name=name, where=where, device=device, **merged, **kw)


def _parse_recording(P: _Parser, r: dict, where: str, subjects: dict, dropped: dict) -> RecordingSpec | None:
    """``subjects``: the parsed [[subject]] entries by name; ``dropped``: where each entry left
    out for a bad name is (by that name). A recording whose subject is not among ``subjects`` is
    a problem, and is still parsed (its spec's subject then names none of them: see
    Study.unassigned), without its subject's settings."""
    name = P.name(r.get("name"), where)
    if name is None:
        return None
    subj = r.get("subject")
    if isinstance(subj, str) and subj in dropped:
        P.problem(where, f"'subject' = {subj!r}: that subject's name is not usable (see {dropped[subj]}); "
                         "rename it in both places")
    elif not isinstance(subj, str) or subj not in subjects:
        known = list(subjects)
        P.problem(where, f"'subject' = {subj!r} is not a [[subject]] of this study{_suggest(str(subj), known)}; "
                         f"subjects: {known}")
    subject = subjects.get(subj) if isinstance(subj, str) else None
    kw: dict[str, Any] = {}
    if "folder" in r:
        kw["folder"] = P.path_value(r["folder"], where, "folder")
        for k in ("views", "geometry", "calibration", "frame_rate_hz"):
            if k in r:
                P.problem(where, f"{k!r} is set together with 'folder': the folder's recording.json says it "
                                 "(give either 'folder' or 'views' + 'geometry'/'calibration')")
    elif "views" in r:
        v = r["views"]
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)):
            P.problem(where, f"'views' = {v!r}: expected the two image sequences, e.g. [\"view1/\", \"view2/\"]")
        else:
            kw["views"] = tuple(P.path_value(x, where, "views") for x in v)
        if ("geometry" in r) == ("calibration" in r):
            P.problem(where, "expected exactly one of 'geometry' (a geometry file) and 'calibration' (calibration "
                             "files) with 'views'")
        if "geometry" in r:
            kw["geometry"] = P.path_value(r["geometry"], where, "geometry")
        if "calibration" in r:
            kw["calibration"] = _parse_calibration(P, r["calibration"], where)
        if "frame_rate_hz" in r:
            f = r["frame_rate_hz"]
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not (math.isfinite(f) and f > 0):
                P.problem(where, f"'frame_rate_hz' = {f!r}: expected a positive number of frames per second")
            else:
                kw["frame_rate_hz"] = float(f)
    else:
        P.problem(where, "expected 'folder' (a recording folder with recording.json) or 'views' + 'geometry' / "
                         "'calibration'")
    if "reference" in r:
        kw["reference"] = P.path_value(r["reference"], where, "reference")
    device = P.device(r.get("device", subject.device if subject else "cpu"), where)
    own = P.settings_tables(r, where, ("register",)).get("register", {})
    return RecordingSpec(name=name, subject=subj if isinstance(subj, str) else repr(subj), where=where, device=device,
                         register={**(subject.register if subject else {}), **own}, **kw)


def _parse_calibration(P: _Parser, value, where: str) -> CalibrationSpec | None:
    w = f"{where} [calibration]"
    c = P.table(value, w, _CALIBRATION_KEYS)
    ok = True
    m = c.get("mayacam")
    if not (isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m)):
        P.problem(w, f"'mayacam' = {m!r}: expected two MayaCam 2.0 camera files, one per view")
        ok = False
    pitch = c.get("pitch_mm")
    if isinstance(pitch, bool) or not isinstance(pitch, (int, float)) or not (math.isfinite(pitch) and pitch > 0):
        P.problem(w, f"'pitch_mm' = {pitch!r}: expected the intensifier pixel pitch in mm (> 0)")
        ok = False
    plates = c.get("plates")
    if plates is not None and not (isinstance(plates, list) and len(plates) == 2
                                   and all(isinstance(x, str) for x in plates)):
        P.problem(w, f"'plates' = {plates!r}: expected two bead-plate images, one per view")
        ok = False
    radius = c.get("bead_radius_px", 4.0)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0:
        P.problem(w, f"'bead_radius_px' = {radius!r}: expected a positive radius in pixels")
        ok = False
    polarity = c.get("polarity", "dark")
    if polarity not in ("dark", "bright"):
        P.problem(w, f"'polarity' = {polarity!r}: expected 'dark' or 'bright'")
        ok = False
    spacing = c.get("spacing_mm")
    if spacing is not None and (isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or not spacing > 0):
        P.problem(w, f"'spacing_mm' = {spacing!r}: expected the bead spacing in mm (> 0)")
        ok = False
    if not ok:
        return None
    return CalibrationSpec(mayacam=tuple(P.path_value(x, w, "mayacam") for x in m), pitch_mm=float(pitch),
                           plates=tuple(P.path_value(x, w, "plates") for x in plates) if plates else None,
                           bead_radius_px=float(radius), polarity=polarity,
                           spacing_mm=float(spacing) if spacing is not None else None)


def _field_problems(build, values: dict) -> list[tuple[str | None, str]]:
    """Every bad field of a settings table, as (key, message): the configurations stop at their
    first bad field, so each field is tried alone (the others at their defaults), then what only
    their combination breaks (key None)."""
    try:
        build(values)
        return []
    except (TypeError, ValueError) as exc:
        found: list[tuple[str | None, str]] = []
        for k, v in values.items():
            try:
                build({k: v})
            except (TypeError, ValueError) as one:
                found.append((k, str(one)))
        return found + ([(None, str(exc))] if str(exc) not in [m for _, m in found] else [])


def _check_configs(P: _Parser, s: SubjectSpec, recordings: list[RecordingSpec], threads: int,
                   shared: dict[str, dict]) -> None:
    """Build every configuration of a subject and its recordings once: bad values fail now. A bad
    value is reported once, where it is set: ``[settings.<table>]`` (``shared``) when the subject
    (and recording) inherit it, else the subject's or the recording's own table."""
    def report(problems, *chain) -> None:
        # chain: (label, merged values) from the entry outward to [settings.<table>]; a value is
        # set at the outermost table of the unbroken run holding the same value
        for key, msg in problems:
            label = chain[0][0]
            for outer, values in chain[1:]:
                if key is None or key not in values or values[key] != chain[0][1].get(key):
                    break
                label = outer
            P.problem(label, msg)

    def study(table: str) -> tuple[str, dict]:
        return _loc(P.path, f"[settings.{table}]"), shared.get(table, {})

    def dataset(values):
        return dataset_config(values, source_distance_auto=(550.0, 900.0))

    bad = _field_problems(dataset, s.dataset)
    report(bad, (f"{s.where} dataset settings", s.dataset), study("dataset"))
    ds = dataset({} if bad else s.dataset)  # the defaults' pixel and image size, to check the rest
    tables = []
    if s.detector is None:
        tables.append(("detector_training", lambda v: detector_config(v, threads)))
    if s.translator is None and uses_translator(s, recordings):
        tables.append(("style_training", lambda v: style_config(v, ds.image_size)))
    for table, build in tables:
        values = getattr(s, table)
        report(_field_problems(build, values), (f"{s.where} {table} settings", values), study(table))
    for r in recordings:
        report(_field_problems(lambda v: pipeline_options(v, ds.pixel_mm, threads), r.register),
               (f"{r.where} register settings", r.register), (f"{s.where} register settings", s.register),
               study("register"))


def load_study(path) -> Study:
    """Read and validate the study manifest at ``path`` (the TOML format of the module
    docstring); raises :class:`ManifestError` listing every problem."""
    path = Path(path)
    return parse_study(_read_toml(path), path)
