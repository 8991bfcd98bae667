"""Tests for fluororeg.subject.landmarks (Slicer/CSV landmark files) and fluororeg.subject.subject."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import pdist

import fluororeg

from fluororeg.subject.example import default_cache_dir, headsq_path
from fluororeg.subject.landmarks import Landmarks, load_landmarks, save_landmarks
from fluororeg.subject.proposal import propose_landmarks
from fluororeg.subject.subject import Subject, example_subject, load_subject, make_subject, save_subject
from fluororeg.subject.symmetry import _rot, symmetry_plane
from fluororeg.core.volume import Volume
from fluororeg.io.volume_formats import load_volume, save_volume

FLIP = np.array([-1.0, -1.0, 1.0])


def sample_landmarks() -> Landmarks:
    return Landmarks(("nasion", "orbitale_L", "orbitale_R", "odd, name", "ünïcode"),
                     np.array([[1.25, -80.5, 3.0], [35.125, -70.0, -20.1], [-33.0, -71.3, -19.9],
                               [0.1 + 0.2, 1e-9, -1e6 / 3.0], [-0.0, 12.0, 13.0]]))


# ====================================================================== landmarks
@pytest.mark.parametrize("ext", [".mrk.json", ".fcsv", ".csv", ".json"])
@pytest.mark.parametrize("cs", ["LPS", "RAS"])
def test_landmark_round_trip_exact(tmp_path, ext, cs):
    lm = sample_landmarks()
    p = tmp_path / f"lm{ext}"
    save_landmarks(p, lm, coordinate_system=cs)
    back = load_landmarks(p)
    assert back.names == lm.names
    np.testing.assert_array_equal(back.positions, lm.positions)
    assert back == lm


def test_ras_files_store_negated_xy(tmp_path):
    lm = sample_landmarks()
    save_landmarks(tmp_path / "a.mrk.json", lm, coordinate_system="RAS")
    doc = json.loads((tmp_path / "a.mrk.json").read_text())
    assert "markups-schema-v1.0" in doc["@schema"]
    mk = doc["markups"][0]
    assert mk["type"] == "Fiducial" and mk["coordinateSystem"] == "RAS"
    assert [cp["label"] for cp in mk["controlPoints"]] == list(lm.names)
    np.testing.assert_array_equal([cp["position"] for cp in mk["controlPoints"]], lm.positions * FLIP)

    save_landmarks(tmp_path / "a.fcsv", lm, coordinate_system="RAS")
    text = (tmp_path / "a.fcsv").read_text().splitlines()
    assert text[0].startswith("# Markups fiducial file version")
    assert text[1] == "# CoordinateSystem = RAS"
    assert text[2].startswith("# columns = id,x,y,z,")
    first = text[3].split(",")
    assert [float(v) for v in first[1:4]] == list(lm.positions[0] * FLIP)
    assert first[11] == "nasion"

    save_landmarks(tmp_path / "a.csv", lm, coordinate_system="RAS")
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert lines[0] == "# coordinate_system = RAS" and lines[1] == "name,x,y,z"
    save_landmarks(tmp_path / "b.csv", lm)
    assert (tmp_path / "b.csv").read_text().splitlines()[0] == "name,x,y,z"


SLICER5_JSON = """{
"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
"markups": [
    {
        "type": "Fiducial", "coordinateSystem": "RAS", "coordinateUnits": "mm", "locked": false,
        "fixedNumberOfControlPoints": false, "labelFormat": "%N-%d", "lastUsedControlPointNumber": 2,
        "controlPoints": [
            {"id": "1", "label": "F-1", "description": "", "associatedNodeID": "vtkMRMLScalarVolumeNode1",
             "position": [10.5, -20.25, 30.0], "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
             "selected": true, "locked": false, "visibility": true, "positionStatus": "defined"},
            {"id": "2", "label": "F-2", "description": "", "associatedNodeID": "",
             "position": [-1.0, 2.0, -3.0], "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
             "selected": true, "locked": false, "visibility": true, "positionStatus": "defined"}
        ],
        "measurements": [],
        "display": {"visibility": true, "opacity": 1.0, "color": [0.4, 1.0, 1.0]}
    },
    {
        "type": "Line", "coordinateSystem": "LPS",
        "controlPoints": [{"id": "1", "label": "L-1", "position": [0, 0, 0]},
                          {"id": "2", "label": "L-2", "position": [1, 1, 1]}]
    },
    {
        "type": "Fiducial", "coordinateSystem": "LPS",
        "controlPoints": [{"id": "1", "label": "G-1", "position": [4, 5, 6]}]
    }
]
}
"""


def test_read_slicer_json_several_lists(tmp_path):
    p = tmp_path / "F.mrk.json"
    p.write_text(SLICER5_JSON)
    lm = load_landmarks(p)
    assert lm.names == ("F-1", "F-2", "G-1")  # the Line markup is ignored
    np.testing.assert_array_equal(lm.positions, [[-10.5, 20.25, 30.0], [1.0, -2.0, -3.0], [4, 5, 6]])


FCSV_411 = """# Markups fiducial file version = 4.11
# CoordinateSystem = LPS
# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID
vtkMRMLMarkupsFiducialNode_0,-10.5,20.25,30,0,0,0,1,1,1,0,nasion,,vtkMRMLScalarVolumeNode1
vtkMRMLMarkupsFiducialNode_1,1,2,3,0,0,0,1,1,1,0,"porion, left",a description,
"""

FCSV_OLD = """# Markups fiducial file version = 4.6
# CoordinateSystem = {cs}
# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID
vtkMRMLMarkupsFiducialNode_0,10.5,-20.25,30,0,0,0,1,1,1,0,F-1,,
"""


def test_read_fcsv_variants(tmp_path):
    p = tmp_path / "a.fcsv"
    p.write_text(FCSV_411)
    lm = load_landmarks(p)
    assert lm.names == ("nasion", "porion, left")
    np.testing.assert_array_equal(lm.positions, [[-10.5, 20.25, 30.0], [1.0, 2.0, 3.0]])
    for cs, expect in (("0", [-10.5, 20.25, 30.0]), ("1", [10.5, -20.25, 30.0]),
                       ("RAS", [-10.5, 20.25, 30.0])):
        p.write_text(FCSV_OLD.format(cs=cs))
        np.testing.assert_array_equal(load_landmarks(p).positions, [expect])
    # no CoordinateSystem line (Slicer < 4.11): RAS
    p.write_text("\n".join(l for l in FCSV_OLD.splitlines() if "CoordinateSystem" not in l))
    np.testing.assert_array_equal(load_landmarks(p).positions, [[-10.5, 20.25, 30.0]])


def test_read_plain_csv_variants(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("name,x,y,z,comment\nA,1,2,3,first\nB,-4.5,5,6e1,\n")
    lm = load_landmarks(p)
    assert lm.names == ("A", "B")
    np.testing.assert_array_equal(lm.positions, [[1, 2, 3], [-4.5, 5, 60]])
    p.write_text("# coordinate_system = RAS\nname,x,y,z\nA,1,2,3\n")
    np.testing.assert_array_equal(load_landmarks(p).positions, [[-1, -2, 3]])
    p.write_text("x,y,z,name,coordinate_system\n1,2,3,A,RAS\n1,2,3,B,LPS\n1,2,3,C,\n")
    np.testing.assert_array_equal(load_landmarks(p).positions, [[-1, -2, 3], [1, 2, 3], [1, 2, 3]])


@pytest.mark.parametrize("name,text,match", [
    ("dup.csv", "name,x,y,z\nA,1,2,3\nB,1,2,3\nA,4,5,6\n", "duplicate landmark name 'A'"),
    ("empty.csv", "name,x,y,z\nA,1,2,3\n,1,2,3\n", "empty name"),
    ("nan.csv", "name,x,y,z\nA,1,nan,3\n", r"line 2.*'A'.*column y.*'nan'"),
    ("text.csv", "name,x,y,z\nA,1,two,3\n", r"line 2.*'two'"),
    ("cols.csv", "name,x,y\nA,1,2\n", r"lacks column\(s\) \['z'\]"),
    ("short.csv", "name,x,y,z\nA,1,2\n", "line 2: 3 values for 4 columns"),
    ("cs.csv", "# coordinate_system = XYZ\nname,x,y,z\nA,1,2,3\n", "unknown coordinate system 'XYZ'"),
    ("csrow.csv", "name,x,y,z,coordinate_system\nA,1,2,3,IJK\n", "unknown coordinate system 'IJK'"),
    ("nohdr.csv", "# nothing\n", "no header row"),
    ("cs.fcsv", "# CoordinateSystem = 2\nid,1,2,3,0,0,0,1,1,1,0,A,,\n", "unknown coordinate system '2'"),
    ("inf.fcsv", "# CoordinateSystem = LPS\nid,1,2,inf,0,0,0,1,1,1,0,A,,\n", r"line 2.*'A'.*'inf'"),
    ("few.fcsv", "# CoordinateSystem = LPS\nid,1,2,3\n", "line 2: expected at least 12 columns"),
    ("dup.fcsv", "# CoordinateSystem = LPS\nid,1,2,3,0,0,0,1,1,1,0,A,,\nid,1,2,3,0,0,0,1,1,1,0,A,,\n",
     "duplicate landmark name 'A'"),
    ("cols.fcsv", "# columns = id,x,y,z,label2\n", "'columns' lacks 'label'"),
    ("empty.fcsv", "# CoordinateSystem = LPS\n", "contains no landmarks"),
    ("bad.mrk.json", "{not json", "not valid JSON"),
    ("nomk.mrk.json", '{"a": 1}', "no top-level 'markups'"),
    ("line.mrk.json", '{"markups": [{"type": "Line", "controlPoints": []}]}', "no 'Fiducial' markups"),
    ("cs.mrk.json", '{"markups": [{"type": "Fiducial", "coordinateSystem": "XYZ", "controlPoints": []}]}',
     "unknown coordinate system 'XYZ'"),
    ("undef.mrk.json", '{"markups": [{"type": "Fiducial", "controlPoints": [{"label": "A", '
     '"positionStatus": "undefined"}]}]}', r"\('A'\) has no position"),
    ("nan.mrk.json", '{"markups": [{"type": "Fiducial", "controlPoints": [{"label": "A", '
     '"position": [1, NaN, 3]}]}]}', r"'A'.*non-finite"),
    ("dup.mrk.json", '{"markups": [{"type": "Fiducial", "controlPoints": [{"label": "A", '
     '"position": [1, 2, 3]}, {"label": "A", "position": [1, 2, 3]}]}]}', "duplicate landmark name 'A'"),
    ("empty.mrk.json", '{"markups": [{"type": "Fiducial", "controlPoints": [{"label": "", '
     '"position": [1, 2, 3]}]}]}', "empty"),
])
def test_landmark_file_errors(tmp_path, name, text, match):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_landmarks(p)


def test_landmark_api_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.fcsv"):
        load_landmarks(tmp_path / "nope.fcsv")
    with pytest.raises(ValueError, match="unknown landmark file format"):
        load_landmarks(tmp_path / "a.txt")
    with pytest.raises(ValueError, match="unknown coordinate_system 'IJK'"):
        save_landmarks(tmp_path / "a.csv", sample_landmarks(), coordinate_system="IJK")
    with pytest.raises(ValueError, match="duplicate landmark name 'a'"):
        Landmarks(("a", "b", "a"), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-empty"):
        Landmarks(("a", " "), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"landmark 'b' has a non-finite position"):
        Landmarks(("a", "b"), [[0, 0, 0], [0, np.inf, 0]])
    with pytest.raises(ValueError, match="2 landmark names but 3 positions"):
        Landmarks(("a", "b"), np.zeros((3, 3)))
    lm = sample_landmarks()
    assert lm.index("orbitale_R") == 2 and len(lm) == 5
    with pytest.raises(KeyError, match="unknown landmark 'x'"):
        lm.index("x")
    assert not lm.positions.flags.writeable


# ====================================================================== subject (headsq)
@pytest.fixture(scope="module")
def headsq():
    p = headsq_path()
    if p is None:
        pytest.skip("../shared/data/headsq is not available")
    return p, load_volume(p)


def bone_landmarks(ct: Volume) -> Landmarks:
    """Six extreme bone voxels of the CT (largest component at 300 HU), by physical axis."""
    m = ct.mask(300.0).data
    k, j, i = np.nonzero(m)
    pts = ct.voxel_to_physical(np.stack([i, j, k], axis=1).astype(float))
    pick = {"lateral_L": np.argmax(pts[:, 0]), "lateral_R": np.argmin(pts[:, 0]),
            "anterior": np.argmin(pts[:, 1]), "posterior": np.argmax(pts[:, 1]),
            "superior": np.argmax(pts[:, 2]), "inferior": np.argmin(pts[:, 2])}
    return Landmarks(tuple(pick), pts[list(pick.values())])


def write_subject(folder: Path, ct_path: Path, lm: Landmarks, **spec_extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ct_path, folder / "ct.nii.gz")
    save_landmarks(folder / "landmarks.fcsv", lm, coordinate_system="RAS")
    spec = {"name": "headsq", "ct": "ct.nii.gz", "landmarks": "landmarks.fcsv",
            "pairs": [["lateral_L", "lateral_R"]]}
    spec.update(spec_extra)
    spec = {k: v for k, v in spec.items() if v is not None}
    (folder / "subject.json").write_text(json.dumps(spec))
    return folder


@pytest.fixture()
def subject_dir(tmp_path, headsq):
    path, ct = headsq
    return write_subject(tmp_path / "s", path, bone_landmarks(ct))


def test_load_subject_folder(subject_dir, headsq):
    _, ct = headsq
    s = load_subject(subject_dir)
    lm = bone_landmarks(ct)
    assert s.name == "headsq"
    assert s.landmark_names == lm.names
    np.testing.assert_allclose(s.landmarks.positions, lm.positions, atol=1e-12)
    assert s.pairs == ((0, 1),)
    assert s.pair_names == (("lateral_L", "lateral_R"),)
    np.testing.assert_allclose(s.origin, lm.positions.mean(axis=0), atol=1e-12)
    assert s.mask.data.dtype == np.uint8
    np.testing.assert_array_equal(s.mask.data, ct.mask(300.0).data)
    np.testing.assert_array_equal(s.mask.physical_from_voxel, s.ct.physical_from_voxel)
    assert s.mask_rule == {"threshold_hu": 300.0, "largest_component": True}
    # every chosen landmark is on bone
    ijk = np.rint(s.ct.physical_to_voxel(s.landmarks.positions)).astype(int)
    assert s.mask.data[ijk[:, 2], ijk[:, 1], ijk[:, 0]].all()
    # the json file path works too, and a name defaults to the folder's
    spec = json.loads((subject_dir / "subject.json").read_text())
    del spec["name"]
    (subject_dir / "subject.json").write_text(json.dumps(spec))
    assert load_subject(subject_dir / "subject.json").name == subject_dir.name


def test_model_frame_consistency(subject_dir):
    s = load_subject(subject_dir)
    np.testing.assert_allclose(s.landmarks_model + s.origin, s.landmarks.positions, atol=1e-12)
    np.testing.assert_allclose(s.landmarks_model.mean(axis=0), 0.0, atol=1e-9)  # centroid origin
    att = s.attenuation_model()
    assert att.data.dtype == np.float32
    body = s.body_mask()
    assert body.shape == s.ct.data.shape and body.dtype == bool and s.body_mask() is body  # computed once
    np.testing.assert_array_equal(att.data[body], s.ct.hu_to_attenuation(0.02).data[body])
    assert np.all(att.data[~body] == 0)  # objects apart from the body (table, holder) are air
    expect = s.ct.physical_from_voxel.copy()
    expect[:3, 3] -= s.origin
    np.testing.assert_allclose(att.physical_from_voxel, expect, atol=1e-9)
    assert s.attenuation_model() is att and s.attenuation_model(0.02) is att
    att2 = s.attenuation_model(0.03)
    assert att2 is not att
    np.testing.assert_allclose(att2.data.max() / att.data.max(), 1.5, rtol=1e-5)
    mm = s.mask_model()
    assert mm is s.mask_model() and mm.data.dtype == np.uint8
    np.testing.assert_allclose(mm.physical_from_voxel, expect, atol=1e-9)
    # a landmark's model position maps to the same voxel in the model-frame volumes
    np.testing.assert_allclose(att.physical_to_voxel(s.landmarks_model),
                               s.ct.physical_to_voxel(s.landmarks.positions), atol=1e-9)


def test_explicit_origin_and_mirror_permutation(tmp_path, headsq):
    path, ct = headsq
    lm = bone_landmarks(ct)
    d = write_subject(tmp_path / "s", path, lm, origin=[-100.0, -100.0, 70.0],
                      pairs=[["lateral_L", "lateral_R"], ["posterior", "anterior"]])
    s = load_subject(d)
    np.testing.assert_array_equal(s.origin, [-100.0, -100.0, 70.0])
    np.testing.assert_allclose(s.landmarks_model, lm.positions - [-100.0, -100.0, 70.0], atol=1e-12)
    perm = s.mirror_permutation()
    names = s.landmark_names
    assert [names[p] for p in perm] == ["lateral_R", "lateral_L", "posterior", "anterior",
                                         "superior", "inferior"]
    np.testing.assert_array_equal(perm[perm], np.arange(len(names)))


def test_fingerprint_stable_and_sensitive(tmp_path, subject_dir, headsq):
    path, ct = headsq
    s1 = load_subject(subject_dir)
    s2 = load_subject(subject_dir)
    fp = s1.fingerprint
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert s2.fingerprint == fp and s1.fingerprint is fp  # deterministic, cached
    # same value in a fresh interpreter (no dependence on hash seeds or memory layout)
    code = ("import sys; from fluororeg.subject.subject import load_subject; "
            "print(load_subject(sys.argv[1]).fingerprint)")
    out = subprocess.run([sys.executable, "-c", code, str(subject_dir)], capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(Path(fluororeg.__file__).parents[1]),
                                                     "PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == fp

    lm = s1.landmarks
    moved = Landmarks(lm.names, lm.positions + np.array([[0.0, 0.0, 0.1]] + [[0.0, 0.0, 0.0]] * 5))
    variants = {
        "landmark moved": make_subject("headsq", s1.ct, moved, s1.pairs, origin=s1.origin),
        "pairs": make_subject("headsq", s1.ct, lm, [(1, 0)], origin=s1.origin),
        "no pairs": make_subject("headsq", s1.ct, lm, [], origin=s1.origin),
        "origin": make_subject("headsq", s1.ct, lm, s1.pairs, origin=s1.origin + [0, 0.01, 0]),
        "mask": make_subject("headsq", s1.ct, lm, s1.pairs, origin=s1.origin, threshold_hu=400.0),
        "renamed landmark": make_subject("headsq", s1.ct, Landmarks(("X",) + lm.names[1:], lm.positions),
                                         [(0, 1)], origin=s1.origin),
    }
    data = np.array(s1.ct.data)
    data[40, 30, 30] += 1
    ct2 = Volume(data, s1.ct.spacing, s1.ct.origin, s1.ct.direction)
    variants["ct voxel"] = Subject("headsq", ct2, lm, s1.pairs, s1.origin, s1.mask)
    variants["ct spacing"] = Subject("headsq", Volume(s1.ct.data, s1.ct.spacing * [1, 1, 1.0001],
                                                      s1.ct.origin, s1.ct.direction),
                                     lm, s1.pairs, s1.origin,
                                     Volume(s1.mask.data, s1.ct.spacing * [1, 1, 1.0001],
                                            s1.ct.origin, s1.ct.direction))
    same = make_subject("other name", s1.ct, lm, [("lateral_L", "lateral_R")])
    assert same.fingerprint == fp  # the name is not part of the fingerprint
    fps = {k: v.fingerprint for k, v in variants.items()}
    for k, v in fps.items():
        assert v != fp, k
    assert len(set(fps.values())) == len(fps)


@pytest.mark.parametrize("ext", [".npz", ".nrrd", ".nii.gz"])
def test_save_subject_round_trip(tmp_path, subject_dir, ext):
    s = load_subject(subject_dir)
    out = save_subject(s, tmp_path / "copy", ct_filename="ct" + ext)
    assert out == tmp_path / "copy" / "subject.json"
    spec = json.loads(out.read_text())
    assert spec["ct"] == "ct" + ext and spec["origin"] == "centroid"
    assert spec["mask"] == {"threshold_hu": 300.0, "largest_component": True}
    assert spec["pairs"] == [["lateral_L", "lateral_R"]]
    assert (tmp_path / "copy" / "landmarks.mrk.json").is_file()
    assert not any(p.name.startswith("mask") for p in (tmp_path / "copy").iterdir())
    t = load_subject(tmp_path / "copy")
    assert t.name == s.name and t.landmark_names == s.landmark_names and t.pairs == s.pairs
    np.testing.assert_array_equal(t.landmarks.positions, s.landmarks.positions)
    np.testing.assert_array_equal(t.ct.data, s.ct.data)
    np.testing.assert_array_equal(t.mask.data, s.mask.data)
    if ext != ".nii.gz":  # NIfTI keeps geometry as float32 only
        assert t.fingerprint == s.fingerprint


def test_mask_from_file(tmp_path, headsq):
    path, ct = headsq
    lm = bone_landmarks(ct)
    d = write_subject(tmp_path / "s", path, lm, mask={"file": "bone.nii.gz"})
    mask = ct.mask(500.0, largest_component=False)
    save_volume(mask, d / "bone.nii.gz")
    s = load_subject(d)
    assert s.mask_rule is None
    np.testing.assert_array_equal(s.mask.data, mask.data)
    out = save_subject(s, tmp_path / "copy", ct_filename="ct.npz")
    spec = json.loads(out.read_text())
    assert spec["mask"] == {"file": "mask.npz"}
    t = load_subject(tmp_path / "copy")
    np.testing.assert_array_equal(t.mask.data, mask.data)
    # an explicit threshold rule
    d2 = write_subject(tmp_path / "s2", path, lm, mask={"threshold_hu": 500, "largest_component": False})
    np.testing.assert_array_equal(load_subject(d2).mask.data, mask.data)


def _expect_error(folder: Path, exc, match):
    with pytest.raises(exc, match=match):
        load_subject(folder)


def test_subject_errors(tmp_path, headsq):
    path, ct = headsq
    lm = bone_landmarks(ct)
    n = iter(range(100))

    def case(**spec):
        return write_subject(tmp_path / f"c{next(n)}", path, lm, **spec)

    _expect_error(tmp_path / "missing", FileNotFoundError, "subject.json")
    _expect_error(case(ct="nope.nii.gz"), FileNotFoundError, r"nope\.nii\.gz")
    bad = case(ct="broken.nii.gz")
    (bad / "broken.nii.gz").write_bytes(b"not a nifti file")
    _expect_error(bad, ValueError, r"cannot read the CT .*broken\.nii\.gz")
    _expect_error(case(pairs=[["lateral_L", "anterio"]]), ValueError,
                  r"unknown landmark name 'anterio' \(did you mean 'anterior'\?\)")
    _expect_error(case(pairs=[["lateral_L", "lateral_R"], ["anterior", "lateral_R"]]), ValueError,
                  "landmark 'lateral_R' is in two pairs")
    _expect_error(case(pairs=[["anterior", "anterior"]]), ValueError,
                  "pairs landmark 'anterior' with itself")
    _expect_error(case(pairs=[["anterior"]]), ValueError, r"pairs\[0\] must be \[left_name, right_name\]")
    _expect_error(case(paris=[]), ValueError, r"unknown key 'paris' \(did you mean 'pairs'\?\)")
    _expect_error(case(mask={"threshold": 300}), ValueError, r"unknown key 'threshold' in 'mask'")
    _expect_error(case(mask={"threshold_hu": 5000}), ValueError, "bone mask .* is empty")
    _expect_error(case(mask={"threshold_hu": "high"}), ValueError, "'threshold_hu' must be a finite number")
    _expect_error(case(origin="center"), ValueError, "'origin' must be \"centroid\" or")
    _expect_error(case(origin=[1, 2]), ValueError, "'origin' must be")
    _expect_error(case(landmarks="gone.mrk.json"), FileNotFoundError, r"gone\.mrk\.json")
    # empty mask file / mask on another grid
    d = case(mask={"file": "m.nii.gz"})
    save_volume(Volume(np.zeros(ct.data.shape, np.uint8), ct.spacing, ct.origin, ct.direction), d / "m.nii.gz")
    _expect_error(d, ValueError, r"mask .*m\.nii\.gz.* is empty")
    save_volume(ct.mask(300.0).translated([1.0, 0, 0]), d / "m.nii.gz")
    _expect_error(d, ValueError, r"different grid")
    save_volume(ct.mask(300.0).downsampled(2), d / "m.nii.gz")
    _expect_error(d, ValueError, r"different grid")
    # a landmark outside the CT
    far = Landmarks(lm.names, lm.positions + np.array([[0, 0, 0]] * 5 + [[0, 0, -500.0]]))
    d = tmp_path / "far"
    write_subject(d, path, far)
    _expect_error(d, ValueError, r"landmark 'inferior' at \[.*\] mm lies outside the CT")
    # fewer than 4 landmarks
    d = tmp_path / "few"
    write_subject(d, path, lm.subset(["lateral_L", "lateral_R", "anterior"]))
    _expect_error(d, ValueError, "at least 4 landmarks, got 3")
    # bad json
    d = case()
    (d / "subject.json").write_text("{")
    _expect_error(d, ValueError, "not valid JSON")


def test_subject_constructor_validation(headsq):
    _, ct = headsq
    lm = bone_landmarks(ct)
    mask = ct.mask(300.0)
    with pytest.raises(ValueError, match="index 9 out of range"):
        Subject("s", ct, lm, ((0, 9),), np.zeros(3), mask)
    with pytest.raises(ValueError, match="grid"):
        Subject("s", ct, lm, (), np.zeros(3), mask.downsampled(2))
    with pytest.raises(ValueError, match="origin must be 3 finite numbers"):
        Subject("s", ct, lm, (), [0, np.nan, 0], mask)
    with pytest.raises(ValueError, match="empty"):
        Subject("s", ct, lm, (), np.zeros(3), Volume(np.zeros(ct.data.shape, np.uint8), ct.spacing,
                                                     ct.origin, ct.direction))
    with pytest.raises(ValueError, match="non-empty string"):
        make_subject("", ct, lm)
    s = Subject("s", ct, lm, [["lateral_L", "lateral_R"]], np.zeros(3),
                Volume((ct.data > 300).astype(np.int16), ct.spacing, ct.origin, ct.direction))
    assert s.pairs == ((0, 1),) and s.mask.data.dtype == np.uint8 and s.mask_rule is None


# ====================================================================== example subject
def test_example_subject():
    from fluororeg.subject import subject as subject_mod

    d = subject_mod._EXAMPLE_DIR
    if not (d / "subject.json").is_file() or not (d / "landmarks.mrk.json").is_file():
        pytest.skip(f"the example subject's files are not written yet ({d})")
    if not (default_cache_dir() / "cranium_hu.npz").is_file():
        pytest.skip("the Cranium CT is not cached (run fluororeg.subject.example.cranium_volume() once)")
    s = example_subject()
    assert s.name == "cranium"
    assert len(s.landmarks) == 33 and len(s.pairs) == 13
    for left, right in s.pair_names:
        assert left.endswith("_L") and right.endswith("_R") and left[:-2] == right[:-2]
    # landmarks of the left side have larger LPS x than their right partner
    for a, b in s.pairs:
        assert s.landmarks.positions[a, 0] > s.landmarks.positions[b, 0]
    # every landmark lies on (or within one voxel of) bone
    from scipy import ndimage

    near = ndimage.binary_dilation(s.mask.data.astype(bool), iterations=1)
    ijk = np.rint(s.ct.physical_to_voxel(s.landmarks.positions)).astype(int)
    assert near[ijk[:, 2], ijk[:, 1], ijk[:, 0]].all()
    assert example_subject().fingerprint == s.fingerprint


# ====================================================================== proposed landmarks
def synthetic_skull(tilt_deg=(5.0, 3.0), shift=(4.0, -3.0, 2.0), spacing=(1.5, 1.5, 1.5),
                    shape=(70, 90, 100)):
    """An ellipsoid shell with a midline bump and a symmetric pair of bumps, mirror-symmetric
    about the model plane x = 0, rotated by a few degrees and shifted. Returns the mask
    volume and the true plane (n, d) with n . X = d."""
    nz, ny, nx = shape
    sp = np.array(spacing)
    rot = _rot(np.array([0, 0, 1.0]), math.radians(tilt_deg[0])) @ _rot(np.array([0, 1.0, 0]),
                                                                        math.radians(tilt_deg[1]))
    t = np.array(shift)
    k, j, i = np.mgrid[0:nz, 0:ny, 0:nx]
    origin = -(np.array([nx, ny, nz]) - 1) / 2 * sp
    X = np.stack([i, j, k], -1).reshape(-1, 3) * sp + origin
    x, y, z = ((X - t) @ rot).T  # model coordinates rot^T (X - t)
    e = (x / 60) ** 2 + (y / 50) ** 2 + (z / 38) ** 2
    shell = (e <= 1) & (e >= 0.75)
    bump = (x ** 2 + (y + 50) ** 2 + (z - 15) ** 2) <= 12 ** 2
    bumps = ((np.abs(x) - 25) ** 2 + (y - 20) ** 2 + (z + 35) ** 2) <= 9 ** 2
    m = (shell | bump | bumps).reshape(shape).astype(np.uint8)
    n = rot @ np.array([1.0, 0.0, 0.0])
    return Volume(m, sp, origin), n, float(n @ t)


@pytest.mark.parametrize("kw", [{}, {"tilt_deg": (-7.0, 4.0), "shift": (-6.0, 2.0, 0.0),
                                     "spacing": (1.2, 1.2, 2.0), "shape": (50, 100, 110)}])
def test_propose_landmarks_synthetic(kw):
    vol, n_true, d_true = synthetic_skull(**kw)
    voxel = float(vol.spacing.max())
    # the symmetry plane itself
    from fluororeg.subject.symmetry import surface_points as _surface_points

    _, surf = _surface_points(vol.data.astype(bool), vol)
    n, d, rms = symmetry_plane(surf, vol)
    assert math.degrees(math.acos(min(1.0, n @ n_true))) < 0.5
    assert abs(d - d_true) < 0.3 * voxel
    assert rms < voxel

    lm, pairs = propose_landmarks(vol, 33, 13)
    assert len(lm) == 33 and len(pairs) == 13
    assert pairs == tuple((2 * q, 2 * q + 1) for q in range(13))
    assert lm.names[:2] == ("auto_01_L", "auto_01_R") and lm.names[26] == "auto_mid_01"
    P = lm.positions
    s = P @ n_true - d_true
    for a, b in pairs:
        mirrored = P[a] - 2 * s[a] * n_true
        assert np.linalg.norm(mirrored - P[b]) < 2 * voxel, (lm.names[a], lm.names[b])
        assert s[a] > 2 * voxel and s[b] < -2 * voxel  # L on the +x side
    assert np.all(np.abs(s[26:]) < voxel)  # unpaired points on the plane
    # on the surface: surface voxel centres
    ijk = vol.physical_to_voxel(P)
    np.testing.assert_allclose(ijk, np.rint(ijk), atol=1e-6)
    ijk = np.rint(ijk).astype(int)
    assert surf[ijk[:, 2], ijk[:, 1], ijk[:, 0]].all()
    # spread: far apart compared with the size of the shape (semi-axes 60/50/38 mm)
    assert pdist(P).min() > 15.0
    # deterministic
    lm2, pairs2 = propose_landmarks(vol, 33, 13)
    assert lm2 == lm and pairs2 == pairs


def test_propose_landmarks_options_and_errors():
    vol, n_true, d_true = synthetic_skull()
    lm, pairs = propose_landmarks(vol, n_landmarks=8, n_pairs=4)
    assert len(lm) == 8 and len(pairs) == 4 and all(n.endswith(("_L", "_R")) for n in lm.names)
    lm, pairs = propose_landmarks(vol, n_landmarks=5, n_pairs=0)
    assert pairs == () and lm.names == tuple(f"auto_{q:02d}" for q in range(1, 6))  # no symmetry: whole surface
    # a CT in HU instead of a mask
    ct = Volume(np.where(vol.data > 0, 1200, -1000).astype(np.int16), vol.spacing, vol.origin)
    lm_ct, _ = propose_landmarks(ct, 9, 3)
    lm_m, _ = propose_landmarks(vol, 9, 3)
    np.testing.assert_array_equal(lm_ct.positions, lm_m.positions)
    with pytest.raises(ValueError, match="n_pairs"):
        propose_landmarks(vol, 5, 3)
    with pytest.raises(TypeError, match="n_landmarks must be an integer"):
        propose_landmarks(vol, 5.0, 1)
    with pytest.raises(ValueError, match="empty"):
        propose_landmarks(Volume(np.zeros((10, 10, 10), np.uint8), [1, 1, 1], [0, 0, 0]))
    # and the proposal makes a valid subject
    s = make_subject("synthetic", ct, *propose_landmarks(ct))
    assert len(s.pairs) == 13 and s.landmark_names[s.mirror_permutation()[0]] == "auto_01_R"


def test_propose_landmarks_headsq(headsq):
    _, ct = headsq
    lm, pairs = propose_landmarks(ct)
    assert len(lm) == 33 and len(pairs) == 13
    bone = ct.mask(300.0).data
    ijk = np.rint(ct.physical_to_voxel(lm.positions)).astype(int)
    assert bone[ijk[:, 2], ijk[:, 1], ijk[:, 0]].all()
    assert pdist(lm.positions).min() > 2 * ct.spacing.max()
    for a, b in pairs:  # left partners lie on the +x (patient left) side
        assert lm.positions[a, 0] > lm.positions[b, 0]
