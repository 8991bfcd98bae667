"""Every file reader against mutated copies of small valid files (seeds.py): truncated, bytes
flipped or inserted, header fields made huge, negative, non-finite or non-numeric. Each input
runs in a forked child under a memory and time limit (harness.py); the contract is a valid
result or a clean error (README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given

import harness
from harness import fuzz_settings
from mutations import mutated


def check_volume(v):
    sp = np.asarray(v.spacing)
    if np.asarray(v.data).ndim != 3 or not (np.all(np.isfinite(sp)) and np.all(sp > 0)):
        return f"volume of shape {np.shape(v.data)} and spacing {sp}"
    return None


def read_volume(d: Path, rel: str):
    from fluororeg.io.volume_formats import load_volume

    p = d / rel
    if rel.endswith(".tif"):
        return load_volume(p, voxel_size_mm=(1.5, 1.5, 2.0), intensity="hu")
    if rel.startswith("s") and rel.endswith(".dcm"):
        return load_volume(d)
    return load_volume(p)


def read_landmarks(d: Path, rel: str):
    from fluororeg.subject.landmarks import load_landmarks

    return load_landmarks(d / rel)


def read_subject(d: Path, rel: str):
    from fluororeg.subject.subject import load_subject

    s = load_subject(d)
    s.mask_model  # noqa: B018 - the derived volumes must work too
    return s.landmarks_model


def read_recording(d: Path, rel: str):
    from fluororeg.io.recording import open_recording

    rec = open_recording(d)
    return [(a.shape, b.shape) for _, a, b in rec.frames()]


def read_poses(d: Path, rel: str):
    from fluororeg.io import poses

    p = d / rel
    if rel.endswith(".csv"):
        return poses.read_poses_csv(p)
    if rel.endswith(".tra"):
        return poses.read_tra(p)
    return poses.read_slicer_tfm(p)


def read_calibration(d: Path, rel: str):
    from fluororeg.calibration import formats
    from fluororeg.calibration.distortion import load_distortion
    from fluororeg.calibration.geometry_file import load_geometry

    p = d / rel
    if rel.endswith(".dlt"):
        return formats.read_dlt(p)
    if rel.startswith("cam"):
        return formats.mayacam_view(p, 0.3)
    if rel.startswith("distortion"):
        m = load_distortion(p)
        return m.undistort_points(np.array([[1.0, 2.0], [10.0, 12.0]]))
    g = load_geometry(p)
    return g.system_centre


def read_interop(d: Path, rel: str):
    from fluororeg.io import autoscoper, xmalab
    from fluororeg.subject.subject import load_subject

    p = d / rel
    if rel.endswith(".cfg"):
        return autoscoper.read_trial_cfg(p)
    if rel.endswith(".json"):
        return autoscoper.read_pose_sidecar(p.with_name(p.name[:-len(".fluororeg.json")]))
    if rel.startswith("xmalab"):
        return xmalab.read_xmalab_rigid_body_csv(p)
    return autoscoper.read_autoscoper_tra(p, load_subject(d.parent / "subject"))


def read_onnx(d: Path, rel: str):
    from fluororeg.inference.onnx_model import OnnxModel

    m = OnnxModel(d / rel, kind="landmark_detector", device="cpu", num_threads=1)
    h, w = m.input_size
    return {k: v.shape for k, v in m.run(np.zeros((1, 1, h, w), np.float32)).items()}


def read_study(d: Path, rel: str):
    from fluororeg.study.manifest import load_study

    return load_study(d / rel)


# (target, seed folder, file in it, reader, text format?, check)
CASES = [
    ("volume .npz", "volumes", "ct.npz", read_volume, False, check_volume),
    ("volume .mha", "volumes", "ct.mha", read_volume, False, check_volume),
    ("volume .mhd header", "volumes", "ct.mhd", read_volume, True, check_volume),
    ("volume .mhd data", "volumes", "ct.raw", lambda d, r: read_volume(d, "ct.mhd"), False, check_volume),
    ("volume .nii", "volumes", "ct.nii", read_volume, False, check_volume),
    ("volume .nii.gz", "volumes", "ct.nii.gz", read_volume, False, check_volume),
    ("volume .nrrd", "volumes", "ct.nrrd", read_volume, False, check_volume),
    ("volume .tif", "volumes", "ct.tif", read_volume, False, check_volume),
    ("volume DICOM", "dicom", "s1.dcm", read_volume, False, check_volume),
    ("landmarks .mrk.json", "landmarks", "lm.mrk.json", read_landmarks, True, None),
    ("landmarks .fcsv", "landmarks", "lm.fcsv", read_landmarks, True, None),
    ("landmarks .csv", "landmarks", "lm.csv", read_landmarks, True, None),
    ("subject.json", "subject", "subject.json", read_subject, True, None),
    ("subject landmarks", "subject", "landmarks.mrk.json", read_subject, True, None),
    ("subject CT", "subject", "ct.mha", read_subject, False, None),
    ("recording.json", "recording", "recording.json", read_recording, True, None),
    ("recording geometry.json", "recording", "geometry.json", read_recording, True, None),
    ("recording PNG frame", "recording", "view1/frame_0001.png", read_recording, False, None),
    ("recording TIFF", "recording_tiff", "view2.tif", read_recording, False, None),
    ("recording video", "recording_video", "view1.avi", read_recording, False, None),
    ("poses.csv", "poses", "poses.csv", read_poses, True, None),
    ("poses .tra", "poses", "poses.tra", read_poses, True, None),
    ("poses .tfm", "poses", "pose.tfm", read_poses, True, None),
    ("MayaCam", "calibration", "cam1.txt", read_calibration, True, None),
    ("DLT", "calibration", "cam1.dlt", read_calibration, True, None),
    ("distortion.json", "calibration", "distortion.json", read_calibration, True, None),
    ("geometry.json", "calibration", "geometry_distorted.json", read_calibration, True, None),
    ("Autoscoper .tra", "poses", "autoscoper.tra", read_interop, True, None),
    ("Autoscoper sidecar", "poses", "autoscoper.tra.fluororeg.json", read_interop, True, None),
    ("Autoscoper trial .cfg", "trial", "trial.cfg", read_interop, True, None),
    ("XMALab CSV", "poses", "xmalab.csv", read_interop, True, None),
    ("ONNX model", ".", "detector.onnx", read_onnx, False, None),
    ("study manifest", "study", "study.toml", read_study, True, None),
]

# Failures that main's code still has and another branch fixes (issue 17); the lead removes
# these marks after merging. Filled in from this suite's findings.
KNOWN: dict[str, str] = {}  # target -> why it is expected to fail (none known)


def _param(case):
    marks = [pytest.mark.xfail(strict=False, reason=KNOWN[case[0]])] if case[0] in KNOWN else []
    return pytest.param(*case, id=case[0], marks=marks)


@pytest.mark.parametrize("target,folder,rel,reader,text,check", [_param(c) for c in CASES])
def test_reader_valid_result_or_clean_error(seeds, scratch, target, folder, rel, reader, text, check):
    seed_dir = seeds / folder
    seed = (seed_dir / rel).read_bytes()
    # The seed itself must read (else the fuzzing says nothing).
    outcome, detail = harness.run_guarded(reader, seed_dir, rel, check=check)
    assert outcome == "valid", f"{target}: the seed file does not read: {detail}"

    @fuzz_settings()
    @given(mutated(seed, text=text))
    def one(case):
        data, how = case
        d = scratch.with_file(seed_dir, rel, data)
        harness.fuzz_call(target, reader, d, rel, check=check, describe=f"{folder}/{rel}: {how}")

    one()
    harness.assert_no_failures(target)
