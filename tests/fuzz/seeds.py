"""Write the fuzz suite's seed files (small valid inputs of every reader) into a folder.

Run as a script (``python seeds.py OUT``) so that the fuzzing process never runs native code
before it forks (see harness.py). Everything is synthetic and tiny; nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def small_volume():
    from fluororeg.core.volume import Volume

    z, y, x = np.mgrid[0:12, 0:14, 0:16]
    data = np.where((x - 8) ** 2 + (y - 7) ** 2 + (z - 6) ** 2 < 25, 1200.0, -1000.0).astype(np.int16)
    return Volume(data, np.array([1.5, 1.5, 2.0]), np.array([-12.0, -10.0, -12.0]))


def landmarks():
    from fluororeg.subject.landmarks import Landmarks

    pos = np.array([[-4.0, 0, 0], [4.0, 0, 0], [0, -4.0, 0], [0, 4.0, 0], [0, 0, -4.0], [0, 0, 4.0]])
    return Landmarks(("L_a", "R_a", "top", "bottom", "front", "back"), pos)


def views(size=24):
    from fluororeg.core.geometry import ConeView

    out = []
    for ang in (-50.0, 50.0):
        a = np.deg2rad(ang)
        src = 650.0 * np.array([np.sin(a), -np.cos(a), 0.0])
        out.append(ConeView.looking_at(src, [0, 0, 0], distance_to_intensifier=1050.0, pitch=8.0, width=size,
                                       height=size))
    return out


def write_dicom_series(vol, folder: Path) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    data = np.asarray(vol.data)
    for k in range(3):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series
        ds.StudyInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.5, 1.5]
        ds.SliceThickness = 2.0
        ds.Rows, ds.Columns = data.shape[1], data.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = data[k].astype(np.int16).tobytes()
        ds.save_as(str(folder / f"s{k}.dcm"), enforce_file_format=True)


def write_seeds(out: Path) -> None:
    from PIL import Image

    from fluororeg.calibration.distortion import DistortionModel, _exponents, save_distortion
    from fluororeg.calibration.formats import write_dlt, write_mayacam, dlt_from_pinhole
    from fluororeg.calibration.geometry_file import DualGeometry, save_geometry
    from fluororeg.calibration.pinhole import pinhole_from_view
    from fluororeg.io.autoscoper import AutoscoperTrial, write_autoscoper_tra, write_trial_cfg
    from fluororeg.io.poses import write_poses_csv, write_slicer_tfm, write_tra
    from fluororeg.io.recording import write_recording_manifest
    from fluororeg.io.volume_formats import save_volume
    from fluororeg.io.xmalab import write_xmalab_rigid_body_csv
    from fluororeg.subject.landmarks import save_landmarks
    from fluororeg.subject.subject import make_subject, save_subject

    out.mkdir(parents=True, exist_ok=True)
    vol = small_volume()
    vdir = out / "volumes"
    vdir.mkdir(exist_ok=True)
    for ext in (".npz", ".mha", ".mhd", ".nii.gz", ".nii", ".nrrd"):
        save_volume(vol, vdir / f"ct{ext}")
    import tifffile

    tifffile.imwrite(vdir / "ct.tif", np.asarray(vol.data).astype(np.uint16))
    write_dicom_series(vol, out / "dicom")

    lm = landmarks()
    ldir = out / "landmarks"
    ldir.mkdir(exist_ok=True)
    for ext in (".mrk.json", ".fcsv", ".csv"):
        save_landmarks(ldir / f"lm{ext}", lm)
    subject = make_subject("fuzzy", vol, lm, pairs=[("L_a", "R_a")])
    save_subject(subject, out / "subject", ct_filename="ct.mha")

    # Recording: two PNG folders, a multi-page TIFF per view, a short video per view.
    vs = views()
    names = ("view1", "view2")
    geo = DualGeometry(tuple(vs), names)
    rec = out / "recording"
    for name in names:
        (rec / name).mkdir(parents=True, exist_ok=True)
    save_geometry(rec / "geometry.json", geo)
    rng = np.random.default_rng(0)
    frames = [(rng.random((24, 24)) * 255).astype(np.uint8) for _ in range(3)]
    for name in names:
        for i, f in enumerate(frames):
            Image.fromarray(f).save(rec / name / f"frame_{i:04d}.png")
    write_recording_manifest(rec, frames=3)
    tif = out / "recording_tiff"
    tif.mkdir(exist_ok=True)
    save_geometry(tif / "geometry.json", geo)
    for name in names:
        Image.fromarray(frames[0]).save(tif / f"{name}.tif", save_all=True,
                                        append_images=[Image.fromarray(f) for f in frames[1:]])
    write_recording_manifest(tif, views=("view1.tif", "view2.tif"), frames=3)
    vid = out / "recording_video"
    vid.mkdir(exist_ok=True)
    save_geometry(vid / "geometry.json", geo)
    import av

    for name in names:
        with av.open(str(vid / f"{name}.avi"), "w") as c:
            s = c.add_stream("mjpeg", rate=10)
            s.width, s.height, s.pix_fmt = 24, 24, "yuvj420p"
            for f in frames:
                fr = av.VideoFrame.from_ndarray(np.stack([f] * 3, -1), format="rgb24")
                for p in s.encode(fr):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    write_recording_manifest(vid, views=("view1.avi", "view2.avi"), frames=3)

    # Poses.
    pdir = out / "poses"
    pdir.mkdir(exist_ok=True)
    F = 3
    poses = np.array([[1.0, -2.0, 3.0, 10.0, -5.0, 7.5]] * F)
    from fluororeg.core.geometry import pose_matrix

    mats = np.stack([pose_matrix(p) for p in poses])
    write_poses_csv(pdir / "poses.csv", np.arange(F), ["ok", "ok", "few_visible"], poses, mats, np.ones(F),
                    np.ones((F, 2)), np.ones((F, 2)), np.full(F, 6), np.zeros(F))
    write_tra(pdir / "poses.tra", mats)
    write_slicer_tfm(pdir / "pose.tfm", mats[0], subject)
    write_autoscoper_tra(pdir / "autoscoper.tra", np.arange(F), mats, subject)
    write_xmalab_rigid_body_csv(pdir / "xmalab.csv", np.arange(F), mats, subject)

    # Calibration files.
    cdir = out / "calibration"
    cdir.mkdir(exist_ok=True)
    for i, v in enumerate(vs):
        write_mayacam(cdir / f"cam{i + 1}.txt", v)
        write_dlt(cdir / f"cam{i + 1}.dlt", dlt_from_pinhole(pinhole_from_view(v)))
    nt = len(_exponents(3))
    coef = np.zeros((nt, 2))
    coef[1, 0] = 0.5
    dist = DistortionModel(3, 24, 24, np.array([11.5, 11.5]), 12.0, coef, -coef, 0.1, 0.2, 40, 0.5, 5.0)
    save_distortion(dist, cdir / "distortion.json")
    save_geometry(cdir / "geometry_distorted.json", DualGeometry(tuple(vs), names, (dist, None)))

    # Autoscoper trial.
    tdir = out / "trial"
    for name in names:
        (tdir / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(frames[0]).save(tdir / name / f"{name}.0001.tif")
    import shutil

    for i in range(2):
        shutil.copy(cdir / f"cam{i + 1}.txt", tdir / f"cam{i + 1}.txt")
    tifffile.imwrite(tdir / "bone.tif", np.asarray(vol.data).astype(np.uint16))
    write_trial_cfg(tdir / "trial.cfg", AutoscoperTrial([tdir / "cam1.txt", tdir / "cam2.txt"],
                                                        [tdir / n for n in names], [tdir / "bone.tif"],
                                                        [(1.5, 1.5, 2.0)], [(0, 0, 0)], (24, 24)))

    # A tiny ONNX detector (the tests' soft-argmax spot detector).
    import importlib.util

    spec = importlib.util.spec_from_file_location("onnx_builders", HERE.parent / "inference" / "conftest.py")
    builders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builders)
    spot_detector = builders.spot_detector  # tests/inference/conftest.py (onnx helper API)

    spot_detector(out / "detector.onnx", 16, lm.names, crop_pixel_mm=2.0, fingerprint=subject.fingerprint)

    # A study manifest (parsed only; the paths exist).
    (out / "study").mkdir(exist_ok=True)
    (out / "study" / "study.toml").write_text(f"""
[study]
name = "fuzz"
out = "run"

[[subject]]
name = "fuzzy"
folder = "{out / 'subject'}"

[[recording]]
name = "walk"
subject = "fuzzy"
folder = "{rec}"

[settings.dataset]
n_train = 48
n_test = 8
image_size = 64
pixel_mm = 4.0
shard_size = 32

[settings.detector_training]
arch = "heatmap"
width = 8
input_size = 64
epochs = 1
batch_size = 16

[settings.register]
style = "log"
min_visible = 4
chunk = 2
""")
    (out / "READY").write_text(json.dumps({"ok": True}))


if __name__ == "__main__":
    write_seeds(Path(sys.argv[1]))
