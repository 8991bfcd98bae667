"""Shared study fixtures: two small subjects (the headsq CT with six landmarks, one as a
subject folder, one as CT + landmarks), three short simulated recordings, and a study built
once per session with tiny models (its detectors and translator are reused as prebuilt models
by the other tests)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

TINY_SETTINGS = """
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

[settings.style_training]
image_size = 64
gen_width = 8
gen_blocks = 1
disc_width = 8
steps = 4
log_every = 2
checkpoint_every = 2

[settings.register]
style = "log"
min_visible = 4
chunk = 2
quality_gate = false   # tiny models: the tests compare poses between runs, not their accuracy
refine = false         # (their poses are far off: intensity refinement would rightly reject them all)
"""


def write_manifest(root: Path, name: str, *, prebuilt: dict | None = None, extra: str = "", study_extra: str = "",
                   recordings=("alpha_walk", "alpha_flex", "beta_walk")) -> Path:
    """A manifest in ``root`` for the session's tree; ``prebuilt`` maps subject -> (detector, translator)."""
    def models(subject):
        if not prebuilt or subject not in prebuilt:
            return ""
        det, tr = prebuilt[subject]
        return f'detector = "{det}"\n' + (f'translator = "{tr}"\n' if tr else "")

    rec_lines = {
        "alpha_walk": '[[recording]]\nname = "alpha_walk"\nsubject = "alpha"\nfolder = "recordings/alpha/walk"\n',
        "alpha_flex": '[[recording]]\nname = "alpha_flex"\nsubject = "alpha"\nfolder = "recordings/alpha/flex"\n',
        "beta_walk": ('[[recording]]\nname = "beta_walk"\nsubject = "beta"\nviews = ["recordings/beta/walk/view1", '
                      '"recordings/beta/walk/view2"]\ngeometry = "recordings/beta/walk/geometry.json"\n'
                      'reference = "recordings/beta/walk/truth.npz"\n'),
        "beta_cal": ('[[recording]]\nname = "beta_cal"\nsubject = "beta"\nviews = ["recordings/beta/walk/view1", '
                     '"recordings/beta/walk/view2"]\n[recording.calibration]\nmayacam = ["calibration/cam1.txt", '
                     '"calibration/cam2.txt"]\npitch_mm = 1.9\nplates = ["recordings/beta/walk/calibration/plate_view1.png", '
                     '"recordings/beta/walk/calibration/plate_view2.png"]\nbead_radius_px = 3.0\n'),
    }
    text = (f'[study]\nname = "{name}"\nretries = 1\nprogress_every_s = 1\n{study_extra}\n' + TINY_SETTINGS + extra
            + '\n[[subject]]\nname = "alpha"\nfolder = "subjects/alpha"\n' + models("alpha")
            + '[subject.register]\nstyle = "translate"\n\n'
            + '[[subject]]\nname = "beta"\nct = "subjects/beta/ct.nrrd"\nlandmarks = "subjects/beta/landmarks.mrk.json"\n'
            + 'pairs = [["left", "right"]]\n' + models("beta") + "\n"
            + "\n".join(rec_lines[r] for r in recordings))
    path = root / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def study_tree(subject, tmp_path_factory) -> Path:
    """subjects/alpha (subject folder), subjects/beta (CT + 5 landmarks, no subject.json) and
    recordings alpha/walk, alpha/flex, beta/walk of 4 frame pairs each at 160 px."""
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording
    from fluororeg.subject.landmarks import Landmarks, save_landmarks
    from fluororeg.subject.subject import make_subject, save_subject

    root = tmp_path_factory.mktemp("study")
    alpha = make_subject("alpha", subject.ct, subject.landmarks, subject.pairs, origin=subject.origin,
                         mask=subject.mask)
    save_subject(alpha, root / "subjects" / "alpha", ct_filename="ct.nrrd")
    (root / "subjects" / "beta").mkdir(parents=True)
    shutil.copyfile(root / "subjects" / "alpha" / "ct.nrrd", root / "subjects" / "beta" / "ct.nrrd")
    keep = [n for n in subject.landmark_names if n != "bottom"]
    lms = subject.landmarks.subset(keep)
    save_landmarks(root / "subjects" / "beta" / "landmarks.mrk.json", lms)
    beta = make_subject("beta", subject.ct, lms, [("left", "right")])
    views = default_dual_views(160, 160, pitch=1.9)
    for subj, name, scenario, seed in ((alpha, "alpha/walk", "walking", 1), (alpha, "alpha/flex", "flexion_extension", 2),
                                       (beta, "beta/walk", "walking", 3)):
        simulate_recording(subj, root / "recordings" / name, scenario=scenario, n_frames=4, views=views, seed=seed)
    (root / "recordings" / "beta" / "walk" / "recording.json").unlink()  # given by views + geometry instead
    # The lab's calibration files of those fluoroscopes: MayaCam 2.0 cameras (bead plates: the simulation's)
    from fluororeg.calibration.formats import write_mayacam

    (root / "calibration").mkdir()
    for k, view in enumerate(views):
        write_mayacam(root / "calibration" / f"cam{k + 1}.txt", view)
    return root


@pytest.fixture(scope="session")
def built_study(study_tree):
    """The study run once with model building (1 worker): (manifest, StudyRun)."""
    from fluororeg.study.manifest import load_study
    from fluororeg.study.run import run_study

    manifest = write_manifest(study_tree, "built")
    run = run_study(load_study(manifest), study_tree / "out_built", workers=1, say=lambda m: None)
    assert run.ok, [(o.key, o.error) for o in run.failures]
    return manifest, run


@pytest.fixture(scope="session")
def prebuilt_models(built_study) -> dict:
    """subject -> (detector.onnx, translator.onnx or None) built by the session's study."""
    _, run = built_study
    out = {}
    for s in ("alpha", "beta"):
        r = run.outcomes[f"models/{s}"].result
        out[s] = (r["detector"], r["translator"])
    return out


@pytest.fixture(scope="session")
def manifest_writer():
    """:func:`write_manifest` for the tests."""
    return write_manifest


@pytest.fixture(scope="session")
def read_poses():
    """read_poses(run, name): the poses [F, 6] a study run wrote for a recording."""
    from fluororeg.io.poses import read_poses_csv

    def read(run, name) -> np.ndarray:
        return read_poses_csv(Path(run.out) / "recordings" / name / "poses.csv")["poses"]

    return read


@pytest.fixture(scope="session")
def cluster_client():
    """A LocalCluster of two single-threaded worker processes (as `study run` starts), shared
    by the tests that run studies on two workers."""
    from fluororeg.study.run import start_local_cluster

    cluster, client = start_local_cluster(2)
    yield client
    client.close()
    cluster.close()
