"""The files a study names: loading subjects and recordings from their specs, computing a
recording's geometry from calibration files, and :func:`check_study_files` (``fluororeg study
check``), which opens every one of them before any work starts and lists every problem."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from fluororeg.study.manifest import RecordingSpec, Study, SubjectSpec

__all__ = ["load_study_subject", "open_study_recording", "calibrated_geometry", "recording_identity",
           "check_study_files", "file_digest"]


def _pairs_from_names(names) -> list[tuple[str, str]]:
    """(left, right) pairs of landmarks named ``<stem>_L`` / ``<stem>_R`` (or _left / _right)."""
    pairs = []
    for n in names:
        for left, right in (("_L", "_R"), ("_left", "_right")):
            if n.endswith(left) and n[:-len(left)] + right in names:
                pairs.append((n, n[:-len(left)] + right))
    return pairs


def load_study_subject(spec: SubjectSpec):
    """The :class:`~fluororeg.subject.subject.Subject` of a spec: its subject folder, or its CT
    and landmarks with the spec's pairs (default: by _L/_R names), origin and mask rule. The
    subject is named after the spec."""
    from fluororeg.subject.subject import load_subject, make_subject

    if spec.folder is not None:
        subject = load_subject(spec.folder)
        if subject.name != spec.name:
            subject = make_subject(spec.name, subject.ct, subject.landmarks, subject.pairs, origin=subject.origin,
                                   mask=subject.mask)
        return subject
    from fluororeg.io.volume_formats import load_volume
    from fluororeg.subject.landmarks import load_landmarks

    if not Path(spec.ct).exists():
        raise FileNotFoundError(f"CT '{spec.ct}' does not exist")
    ct = load_volume(spec.ct)
    landmarks = load_landmarks(spec.landmarks)
    pairs = list(spec.pairs) if spec.pairs is not None else _pairs_from_names(landmarks.names)
    origin = spec.origin if spec.origin == "centroid" else np.asarray(spec.origin, float)
    return make_subject(spec.name, ct, landmarks, pairs, origin=origin, threshold_hu=spec.mask_threshold_hu,
                        largest_component=spec.largest_component)


def calibrated_geometry(spec: RecordingSpec):
    """A recording's DualGeometry from its calibration files (MayaCam views + optional
    bead-plate distortion fits)."""
    from fluororeg.calibration.distortion import fit_distortion
    from fluororeg.calibration.geometry_file import DualGeometry, geometry_from_mayacam

    cal = spec.calibration
    geo = geometry_from_mayacam(cal.mayacam, pitch_u=cal.pitch_mm)
    if cal.plates is None:
        return geo
    models = tuple(fit_distortion(p, radius_px=cal.bead_radius_px, polarity=cal.polarity,
                                  spacing_mm=cal.spacing_mm).model for p in cal.plates)
    return DualGeometry(geo.views, geo.names, models)


def open_study_recording(spec: RecordingSpec, geometry_path=None):
    """Open a recording of the study: its folder, or its views with its geometry file (or
    ``geometry_path``, the geometry computed from its calibration files by the study)."""
    from fluororeg.io.recording import open_recording

    if spec.folder is not None:
        return open_recording(spec.folder)
    geometry = spec.geometry if spec.geometry is not None else geometry_path
    if geometry is None:
        geometry = calibrated_geometry(spec)
    return open_recording(views=spec.views, geometry=geometry, frame_rate_hz=spec.frame_rate_hz)


def file_digest(path) -> str:
    from fluororeg.io.limits import open_regular

    h = hashlib.sha256()
    with open_regular(path, "study input file") as f:  # never a device or FIFO (endless)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recording_identity(recording) -> str:
    """sha256 of what identifies a recording's content cheaply: its frame count, its first and
    last frame pairs and its geometry."""
    from fluororeg.calibration.geometry_file import geometry_to_dict

    h = hashlib.sha256(f"frames={len(recording)}".encode())
    for i in sorted({0, len(recording) - 1}):
        for im in recording.frame(i):
            h.update(np.ascontiguousarray(im, np.float32).tobytes())
    h.update(json.dumps(geometry_to_dict(recording.geometry), sort_keys=True).encode())
    return h.hexdigest()


def check_study_files(study: Study) -> list[str]:
    """Open every file the study names (CTs, landmarks, subject folders, recordings with their
    geometry or calibration files, prebuilt models, references) and return every problem found
    (an empty list: all good). Nothing is written."""
    problems: list[str] = []
    subjects = {}
    for s in study.subjects:
        try:
            subjects[s.name] = load_study_subject(s)
        except Exception as exc:  # every reader's error, reported with where it came from
            problems.append(f"{s.where}: {exc}")
            continue
        for kind, path in (("detector", s.detector), ("translator", s.translator)):
            if path is None:
                continue
            try:
                if kind == "detector":
                    from fluororeg.inference.detector import LandmarkDetector

                    LandmarkDetector(path, subject=subjects[s.name], device="cpu", num_threads=1)
                else:
                    from fluororeg.inference.translator import StyleTranslator

                    StyleTranslator(path, device="cpu", direction="xray_to_drr", num_threads=1)
            except Exception as exc:
                problems.append(f"{s.where}: {kind} '{path}': {exc}")
    for r in study.recordings + study.unassigned:  # the unassigned: their files (no subject to check against)
        try:
            if r.calibration is not None:
                for p in list(r.calibration.mayacam) + list(r.calibration.plates or ()):
                    if not Path(p).is_file():
                        raise FileNotFoundError(f"calibration file '{p}' does not exist")
            rec = open_study_recording(r)
        except Exception as exc:
            problems.append(f"{r.where}: {exc}")
            continue
        ref = r.reference if r.reference is not None else (
            r.folder / "truth.npz" if r.folder is not None and (r.folder / "truth.npz").is_file() else None)
        if ref is not None:
            try:
                reference_poses(ref, len(rec))
            except Exception as exc:
                problems.append(f"{r.where}: reference '{ref}': {exc}")
        # What the subject and recording tell of the register settings (values of the wrong
        # kind are the manifest's problems, listed by load_study: not checked again here)
        subject = subjects.get(r.subject)
        min_visible = r.register.get("min_visible")
        if not isinstance(min_visible, int) or isinstance(min_visible, bool):
            min_visible = None
        if subject is not None and min_visible is not None and min_visible > len(subject.landmarks):
            problems.append(f"{r.where}: register min_visible = {min_visible}, but subject {r.subject!r} has "
                            f"{len(subject.landmarks)} landmarks: no frame could pass; expected at most "
                            f"{len(subject.landmarks)}")
        given_fps = r.register.get("fps")  # None: the recording's own frame rate
        if subject is not None and _positive_number(r.register.get("smoothing_hz")) \
                and (given_fps is None or _positive_number(given_fps)):
            fps = given_fps or rec.frame_rate_hz
            if fps is None:
                problems.append(f"{r.where}: register smoothing_hz needs the frame rate: set 'fps' beside it "
                                "([settings.register] or [recording.register]) or frame_rate_hz in recording.json")
            else:  # what register checks before any work, said before the study runs
                from fluororeg.core.temporal import check_smoothing

                try:
                    check_smoothing(r.register["smoothing_hz"], fps, n_frames=len(rec))
                except ValueError as exc:
                    problems.append(f"{r.where}: register {exc}")
    return problems


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def reference_poses(path, n_frames: int) -> np.ndarray:
    """Reference poses [n_frames, 6] (NaN rows: no reference) from a simulation's truth.npz or
    a pose CSV."""
    from fluororeg.io.poses import read_reference_poses

    ref = read_reference_poses(path, frames=np.arange(n_frames))
    if ref.shape != (n_frames, 6):
        raise ValueError(f"expected reference poses for {n_frames} frames, got shape {ref.shape}")
    return ref


def reference_path(spec: RecordingSpec):
    """The recording's reference poses: its ``reference``, else ``truth.npz`` in its folder
    (a simulated recording), else None."""
    if spec.reference is not None:
        return spec.reference
    if spec.folder is not None and (Path(spec.folder) / "truth.npz").is_file():
        return Path(spec.folder) / "truth.npz"
    return None
