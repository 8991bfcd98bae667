"""Tests for fluororeg.core.volume: geometry, formats, attenuation, downsampling, masks."""

import dataclasses
import random
import zlib

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fluororeg.core.volume import Volume
from fluororeg.io.volume_formats import load_volume, save_volume
from fluororeg.subject.example import headsq_path

FORMATS = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npz"]


def rotated_direction(mirror=False):
    r = Rotation.from_euler("zyx", [30.0, -20.0, 15.0], degrees=True).as_matrix()
    if mirror:
        r = r @ np.diag([1.0, -1.0, 1.0])
    return r


def make_volume(dtype=np.int16, mirror=False, shape=(5, 6, 7), seed=0):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        data = rng.normal(size=shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(max(info.min, -1024), min(info.max, 3000), size=shape).astype(dtype)
    return Volume(data, np.array([0.7, 1.1, 2.3]), np.array([-12.5, 30.25, 101.0]),
                  rotated_direction(mirror))


def geometry_tol(ext):
    return 2e-5 if ext.startswith(".nii") else 1e-12


# ---------------------------------------------------------------------- geometry
def test_geometry_matrices_and_points():
    v = make_volume()
    m = v.physical_from_voxel
    ijk = np.array([2.0, 3.0, 4.0])
    expected = v.origin + v.direction @ (v.spacing * ijk)
    np.testing.assert_allclose(m @ np.r_[ijk, 1.0], np.r_[expected, 1.0], atol=1e-12)
    np.testing.assert_allclose(v.voxel_to_physical(ijk), expected, atol=1e-12)
    np.testing.assert_allclose(v.physical_to_voxel(expected), ijk, atol=1e-12)
    np.testing.assert_allclose(v.voxel_from_physical @ m, np.eye(4), atol=1e-12)
    assert v.shape_xyz == (7, 6, 5)
    # data[k, j, i] is voxel (i, j, k)
    assert v.data.shape == (5, 6, 7)


def test_corners_bounds_center():
    v = Volume(np.zeros((3, 4, 5), np.int16), [1.0, 2.0, 3.0], [10.0, 20.0, 30.0], np.eye(3))
    np.testing.assert_allclose(v.bounds, [[10, 20, 30], [14, 26, 36]])
    assert v.corners.shape == (8, 3)
    np.testing.assert_allclose(v.center, [12, 23, 33])
    flipped = Volume(v.data, v.spacing, v.origin, np.diag([1.0, -1.0, 1.0]))
    np.testing.assert_allclose(flipped.bounds, [[10, 14, 30], [14, 20, 36]])


def test_frozen_and_readonly():
    v = make_volume()
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.origin = np.zeros(3)
    with pytest.raises(ValueError):
        v.data[0, 0, 0] = 1
    with pytest.raises(ValueError):
        v.spacing[0] = 5.0


def test_translated():
    v = make_volume()
    t = v.translated([1.0, -2.0, 3.5])
    np.testing.assert_allclose(t.origin, v.origin + [1.0, -2.0, 3.5])
    np.testing.assert_allclose(t.voxel_to_physical([1, 2, 3]) - v.voxel_to_physical([1, 2, 3]),
                               [1.0, -2.0, 3.5])
    assert t.data is not None and np.array_equal(t.data, v.data)


# ---------------------------------------------------------------------- formats
@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
@pytest.mark.parametrize("mirror", [False, True])
def test_round_trip(tmp_path, ext, dtype, mirror):
    v = make_volume(dtype, mirror=mirror)
    path = tmp_path / f"vol{ext}"
    save_volume(v, path)
    w = load_volume(path)
    assert w.data.dtype == v.data.dtype
    assert w.data.shape == v.data.shape
    np.testing.assert_array_equal(w.data, v.data)
    tol = geometry_tol(ext)
    np.testing.assert_allclose(w.spacing, v.spacing, rtol=tol, atol=0)
    np.testing.assert_allclose(w.origin, v.origin, rtol=0, atol=tol * 200)
    np.testing.assert_allclose(w.direction, v.direction, atol=tol)
    np.testing.assert_allclose(np.linalg.det(w.direction), -1.0 if mirror else 1.0, atol=1e-9)


def test_physical_point_agrees_across_formats(tmp_path):
    v = make_volume()
    ijk = np.array([3.0, 1.0, 4.0])
    expected = v.voxel_to_physical(ijk)
    for ext in FORMATS:
        path = tmp_path / f"v{ext}"
        save_volume(v, path)
        w = load_volume(path)
        got = (w.physical_from_voxel @ np.r_[ijk, 1.0])[:3]
        np.testing.assert_allclose(got, expected, atol=1e-3, err_msg=ext)
        assert w.data[4, 1, 3] == v.data[4, 1, 3]


def test_nifti_is_ras_on_disk(tmp_path):
    import nibabel as nib

    v = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), [1.5, 2.0, 3.0],
               [10.0, 20.0, 30.0], np.eye(3))
    path = tmp_path / "v.nii.gz"
    save_volume(v, path)
    img = nib.load(str(path))
    # LPS (10, 20, 30) is RAS (-10, -20, 30); +i (toward L) is -x in RAS
    np.testing.assert_allclose(img.affine @ [0, 0, 0, 1], [-10, -20, 30, 1], atol=1e-5)
    np.testing.assert_allclose(img.affine @ [1, 0, 0, 1], [-11.5, -20, 30, 1], atol=1e-5)
    arr = np.asanyarray(img.dataobj)
    assert arr.shape == (4, 3, 2)  # nibabel is (i, j, k)
    assert arr[3, 2, 1] == v.data[1, 2, 3]


def test_nifti_written_by_nibabel_converted_to_lps(tmp_path):
    import nibabel as nib

    affine = np.array([[2.0, 0, 0, 5.0], [0, 3.0, 0, 6.0], [0, 0, 4.0, 7.0], [0, 0, 0, 1]])
    arr = np.zeros((4, 5, 6), np.int16)  # (i, j, k)
    arr[1, 2, 3] = 99
    nib.save(nib.Nifti1Image(arr, affine), str(tmp_path / "a.nii"))
    v = load_volume(tmp_path / "a.nii")
    assert v.data.shape == (6, 5, 4)
    assert v.data[3, 2, 1] == 99
    np.testing.assert_allclose(v.spacing, [2, 3, 4])
    # RAS point of voxel (1, 2, 3) is (7, 12, 19) -> LPS (-7, -12, 19)
    np.testing.assert_allclose(v.voxel_to_physical([1, 2, 3]), [-7, -12, 19], atol=1e-6)


def test_nrrd_ras_space_is_converted(tmp_path):
    import nrrd

    arr = np.zeros((3, 4, 5), np.int16)  # C order (k, j, i)
    arr[2, 1, 4] = 7
    header = {"space": "right-anterior-superior",
              "space directions": np.diag([0.5, 0.75, 2.0]),
              "space origin": np.array([1.0, 2.0, 3.0])}
    nrrd.write(str(tmp_path / "a.nrrd"), arr, header, index_order="C")
    v = load_volume(tmp_path / "a.nrrd")
    np.testing.assert_array_equal(v.data, arr)
    np.testing.assert_allclose(v.spacing, [0.5, 0.75, 2.0])
    # voxel (4, 1, 2): RAS (1 + 2, 2 + 0.75, 3 + 4) -> LPS (-3, -2.75, 7)
    np.testing.assert_allclose(v.voxel_to_physical([4, 1, 2]), [-3, -2.75, 7])


def test_metaimage_handwritten_msb_raw_and_transform_convention(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 5  # (k, j, i)
    (tmp_path / "img.raw").write_bytes(arr.astype(">i2").tobytes())
    (tmp_path / "img.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = True\n"
        "CompressedData = False\n"
        # axis i points along +y, axis j along -x, axis k along +z
        "TransformMatrix = 0 1 0 -1 0 0 0 0 1\n"
        "Offset = 1 2 3\nElementSpacing = 0.5 0.25 2\nDimSize = 4 3 2\n"
        "ElementType = MET_SHORT\nElementDataFile = img.raw\n")
    v = load_volume(tmp_path / "img.mhd")
    np.testing.assert_array_equal(v.data, arr)
    np.testing.assert_allclose(v.voxel_to_physical([1, 0, 0]), [1, 2.5, 3])
    np.testing.assert_allclose(v.voxel_to_physical([0, 1, 0]), [0.75, 2, 3])
    np.testing.assert_allclose(v.voxel_to_physical([0, 0, 1]), [1, 2, 5])


@pytest.mark.parametrize("etype,dtype", [("MET_UCHAR", np.uint8), ("MET_CHAR", np.int8),
                                         ("MET_USHORT", np.uint16), ("MET_INT", np.int32),
                                         ("MET_FLOAT", np.float32), ("MET_DOUBLE", np.float64)])
def test_metaimage_local_compressed_types(tmp_path, etype, dtype):
    arr = (np.arange(3 * 2 * 2) % 100).astype(dtype).reshape(3, 2, 2)
    body = zlib.compress(arr.astype(np.dtype(dtype).newbyteorder("<")).tobytes())
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"CompressedData = True\nCompressedDataSize = {len(body)}\n"
              "ElementSpacing = 1 1 1\nDimSize = 2 2 3\n"
              f"ElementType = {etype}\nElementDataFile = LOCAL\n")
    (tmp_path / "a.mha").write_bytes(header.encode() + body)
    v = load_volume(tmp_path / "a.mha")
    assert v.data.dtype == dtype
    np.testing.assert_array_equal(v.data, arr)
    np.testing.assert_allclose(v.direction, np.eye(3))


# ---------------------------------------------------------------------- DICOM
def _write_dicom_series(folder, hu, spacing_ij, dz, origin, row_dir, col_dir,
                        series_uid=None, positions=None):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = hu.shape
    normal = np.cross(row_dir, col_dir)
    series_uid = series_uid or generate_uid()
    names = [f"f{n:03d}.dcm" for n in range(nz)]
    random.Random(3).shuffle(names)  # file order != slice order
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = "1.2.3"
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [f"{spacing_ij[1]:.6f}", f"{spacing_ij[0]:.6f}"]  # (row, column) spacing
        ds.ImageOrientationPatient = [f"{x:.8f}" for x in np.r_[row_dir, col_dir]]
        pos = positions[k] if positions is not None else origin + k * dz * normal
        ds.ImagePositionPatient = [f"{x:.6f}" for x in pos]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = "1"
        ds.RescaleIntercept = "-1024"
        ds.PixelData = (hu[k].astype(np.int32) + 1024).astype("<u2").tobytes()
        ds.save_as(str(folder / names[k]), enforce_file_format=True)


def _tilted_axes():
    r = Rotation.from_euler("zyx", [10.0, 5.0, -25.0], degrees=True).as_matrix()
    return r[:, 0], r[:, 1]


def test_dicom_series_tilted_shuffled(tmp_path):
    rng = np.random.default_rng(1)
    hu = rng.integers(-1024, 2000, size=(4, 5, 7)).astype(np.int16)  # 4 slices, 5 rows, 7 cols
    row_dir, col_dir = _tilted_axes()
    origin = np.array([-50.0, 20.0, 110.0])
    spacing_ij = (0.6, 0.8)  # along i (columns) and along j (rows): anisotropic
    _write_dicom_series(tmp_path / "s", hu, spacing_ij, 2.5, origin, row_dir, col_dir)
    (tmp_path / "s" / "notes.txt").write_text("not a DICOM file")
    v = load_volume(tmp_path / "s")
    assert v.data.dtype == np.int16
    np.testing.assert_array_equal(v.data, hu)
    np.testing.assert_allclose(v.spacing, [0.6, 0.8, 2.5], atol=1e-5)
    np.testing.assert_allclose(v.direction[:, 0], row_dir, atol=1e-6)
    np.testing.assert_allclose(v.direction[:, 1], col_dir, atol=1e-6)
    np.testing.assert_allclose(v.direction[:, 2], np.cross(row_dir, col_dir), atol=1e-6)
    np.testing.assert_allclose(v.origin, origin, atol=1e-5)
    # voxel (i=2, j=3, k=1): column 2 of row 3 of the 2nd slice
    expected = origin + 2 * 0.6 * row_dir + 3 * 0.8 * col_dir + 1 * 2.5 * np.cross(row_dir, col_dir)
    np.testing.assert_allclose(v.voxel_to_physical([2, 3, 1]), expected, atol=1e-5)
    assert v.data[1, 3, 2] == hu[1, 3, 2]
    # a single file selects its series
    one = sorted((tmp_path / "s").glob("*.dcm"))[0]
    np.testing.assert_array_equal(load_volume(one).data, hu)


def test_dicom_mixed_series_error(tmp_path):
    hu = np.zeros((2, 3, 3), np.int16)
    row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    _write_dicom_series(tmp_path / "m", hu, (1, 1), 1.0, np.zeros(3), row_dir, col_dir,
                        series_uid="1.2.3.4")
    for f in (tmp_path / "m").glob("*.dcm"):
        f.rename(f.with_name("a" + f.name))
    _write_dicom_series(tmp_path / "m", hu, (1, 1), 1.0, np.zeros(3), row_dir, col_dir,
                        series_uid="1.2.3.5")
    with pytest.raises(ValueError, match="1.2.3.5"):
        load_volume(tmp_path / "m")


def test_dicom_nonuniform_spacing_error(tmp_path):
    hu = np.zeros((3, 3, 3), np.int16)
    row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    positions = [np.array([0, 0, z]) for z in (0.0, 1.0, 3.0)]
    _write_dicom_series(tmp_path / "n", hu, (1, 1), 1.0, np.zeros(3), row_dir, col_dir,
                        positions=positions)
    with pytest.raises(ValueError, match="non-uniform"):
        load_volume(tmp_path / "n")


def test_empty_folder_error(tmp_path):
    with pytest.raises(ValueError, match="no DICOM"):
        load_volume(tmp_path)


# ---------------------------------------------------------------------- real data
def test_headsq_real_nifti():
    p = headsq_path()
    if p is None:
        pytest.skip("shared/data/headsq not available")
    v = load_volume(p)
    assert v.data.shape == (93, 64, 64)
    np.testing.assert_allclose(v.spacing, [3.2, 3.2, 1.5], rtol=1e-6)
    assert v.data.dtype == np.int16
    assert int(v.data.min()) == -1024 and int(v.data.max()) == 2902
    # identity RAS affine -> LPS direction diag(-1, -1, 1)
    np.testing.assert_allclose(v.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-6)


# ---------------------------------------------------------------------- values
def test_hu_to_attenuation():
    hu = np.array([-2000, -1000, 0, 1000, 3000], dtype=np.int16).reshape(1, 1, 5)
    v = Volume(hu, [1, 1, 1], [0, 0, 0])
    mu = v.hu_to_attenuation()
    assert mu.data.dtype == np.float32
    np.testing.assert_allclose(mu.data.ravel(), [0, 0, 0.02, 0.04, 0.08], atol=1e-7)
    np.testing.assert_allclose(v.hu_to_attenuation(0.03).data.ravel(), [0, 0, 0.03, 0.06, 0.12],
                               atol=1e-7)
    assert mu.spacing is not None and np.array_equal(mu.origin, v.origin)
    noisy_air = Volume(np.array([-980, -920, -880, 0], dtype=np.int16).reshape(1, 1, 4), [1, 1, 1], [0, 0, 0])
    np.testing.assert_allclose(noisy_air.hu_to_attenuation().data.ravel(), [0, 0, 0.0024, 0.02], atol=1e-7)
    np.testing.assert_allclose(noisy_air.hu_to_attenuation(air_hu=None).data.ravel(),
                               [0.0004, 0.0016, 0.0024, 0.02], atol=1e-7)


def test_downsampled_constant_and_mean():
    v = Volume(np.full((8, 12, 16), 7, np.int16), [1, 2, 3], [1, 2, 3], rotated_direction())
    d = v.downsampled(4)
    assert d.data.dtype == np.float32 and d.data.shape == (2, 3, 4)
    np.testing.assert_array_equal(d.data, 7.0)
    rng = np.random.default_rng(5)
    r = Volume(rng.normal(size=(8, 12, 16)).astype(np.float32), [1, 2, 3], [0, 0, 0])
    d2 = r.downsampled(2)
    np.testing.assert_allclose(d2.data.mean(), r.data.mean(), rtol=1e-5)
    manual = r.data.astype(np.float64).reshape(4, 2, 6, 2, 8, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(d2.data, manual, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(d2.spacing, [2, 4, 6])


def test_downsampled_partial_blocks_are_completed_with_background():
    v = Volume(np.full((5, 5, 7), 3.0, np.float32), [1, 1, 1], [0, 0, 0])
    d = v.downsampled(2)
    assert d.data.shape == (3, 3, 4)
    np.testing.assert_allclose(d.data, 3.0)  # a constant volume is its own background
    air = np.zeros((5, 5, 7), np.float32)
    air[4, 4, 6] = 8.0
    np.testing.assert_allclose(Volume(air, [1, 1, 1], [0, 0, 0]).downsampled(2).data[2, 2, 3], 1.0)
    ramp = Volume(np.tile(np.arange(5, dtype=np.float32), (2, 2, 1)), [1, 1, 1], [0, 0, 0])
    np.testing.assert_allclose(ramp.downsampled(2).data[0, 0], [0.5, 2.5, 2.0])  # background 0
    data = np.random.default_rng(0).random((9, 11, 13)).astype(np.float32)
    data[0, 0, 0] = 0.0  # air somewhere: the background is 0
    mu = Volume(data, [1, 1, 1], [0, 0, 0])
    for f in (2, 3, (2, 1, 4)):
        np.testing.assert_allclose(mu.downsampled(f).data.sum() * np.prod(mu.downsampled(f).spacing),
                                   mu.data.sum(), rtol=1e-5)  # total attenuation preserved


def test_downsampled_preserves_physical_position():
    direction = rotated_direction()
    spacing = np.array([0.8, 1.0, 1.3])
    origin = np.array([5.0, -7.0, 12.0])
    shape = (30, 34, 38)
    v0 = Volume(np.zeros(shape, np.float32), spacing, origin, direction)
    centre = v0.voxel_to_physical([17.3, 15.6, 13.2])
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    pts = v0.voxel_to_physical(np.stack([i, j, k], axis=-1).astype(float))
    blob = np.exp(-np.sum((pts - centre) ** 2, axis=-1) / (2 * 3.0 ** 2)).astype(np.float32)
    v = Volume(blob, spacing, origin, direction)
    for f in (2, 3, 4):
        d = v.downsampled(f)
        kk, jj, ii = np.meshgrid(*[np.arange(n) for n in d.data.shape], indexing="ij")
        p = d.voxel_to_physical(np.stack([ii, jj, kk], axis=-1).astype(float))
        w = d.data.astype(float)
        got = (p * w[..., None]).sum(axis=(0, 1, 2)) / w.sum()
        # physical offset expressed in coarse voxels
        err_vox = np.abs(d.direction.T @ (got - centre)) / d.spacing
        assert np.all(err_vox < 0.5), (f, err_vox)
        assert np.linalg.norm(got - centre) < 0.05
        np.testing.assert_allclose(d.origin, v.voxel_to_physical([(f - 1) / 2] * 3))


def test_levels_cached():
    v = make_volume(np.float32, shape=(16, 16, 16))
    assert v.level(0) is v
    l1 = v.level(1)
    assert v.level(1) is l1
    np.testing.assert_allclose(l1.spacing, v.spacing * 2)
    np.testing.assert_allclose(v.level(2).data, v.downsampled(4).data)
    with pytest.raises(ValueError, match="-1"):
        v.level(-1)


def test_level_for_pixel_size():
    v = Volume(np.zeros((64, 64, 64), np.int16), [1.0, 1.0, 2.0], [0, 0, 0])
    assert v.level_for_pixel_size(0.5) == 0   # level 0 is already coarser
    assert v.level_for_pixel_size(2.0) == 0
    assert v.level_for_pixel_size(3.9) == 0
    assert v.level_for_pixel_size(4.0) == 1
    assert v.level_for_pixel_size(8.0) == 2
    assert v.level_for_pixel_size(100.0) == 3  # 64 / 8 = 8 voxels; 64 / 16 < 8 stops
    thin = Volume(np.zeros((100, 20, 200), np.int16), [1.0, 1.0, 1.0], [0, 0, 0])
    assert thin.level_for_pixel_size(100.0) == 1  # ceil(20 / 4) = 5 < 8


def test_mask_largest_component():
    data = np.full((20, 20, 20), -1000, np.int16)
    data[2:5, 2:5, 2:5] = 1500      # 27 voxels
    data[10:16, 10:16, 10:16] = 1200  # 216 voxels
    data[16, 16, 16] = 1300          # diagonal neighbour: 26-connected to the big block
    v = Volume(data, [1, 1, 1], [0, 0, 0])
    m = v.mask(300)
    assert m.data.dtype == np.uint8
    assert int(m.data.sum()) == 217
    assert m.data[3, 3, 3] == 0 and m.data[16, 16, 16] == 1
    assert int(v.mask(300, largest_component=False).data.sum()) == 244
    with pytest.raises(ValueError, match="5000"):
        v.mask(5000)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(data=np.zeros((3, 3))), ValueError, r"\(3, 3\)"),
    (dict(data=np.zeros((0, 3, 3))), ValueError, "non-empty"),
    (dict(data=[[[1]]]), TypeError, "ndarray"),
    (dict(data=np.zeros((2, 2, 2), complex)), TypeError, "complex"),
    (dict(spacing=[1.0, -1.0, 1.0]), ValueError, "-1.0"),
    (dict(spacing=[1.0, 1.0]), ValueError, "3 elements"),
    (dict(spacing=[1.0, np.inf, 1.0]), ValueError, "finite"),
    (dict(origin=[0.0, np.nan, 0.0]), ValueError, "nan"),
    (dict(direction=[[1, 0, 0], [0, 2, 0], [0, 0, 1]]), ValueError, "orthonormal"),
    (dict(direction=np.eye(2)), ValueError, "3x3"),
])
def test_volume_validation(kwargs, exc, match):
    args = dict(data=np.zeros((2, 2, 2), np.int16), spacing=[1.0, 1.0, 1.0],
                origin=[0.0, 0.0, 0.0], direction=np.eye(3))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        Volume(**args)


def test_method_argument_errors():
    v = make_volume()
    with pytest.raises(ValueError, match="0"):
        v.downsampled(0)
    with pytest.raises(TypeError, match="2.0"):
        v.downsampled(2.0)
    with pytest.raises(ValueError, match="-0.5"):
        v.hu_to_attenuation(-0.5)
    with pytest.raises(ValueError, match="nan"):
        v.level_for_pixel_size(float("nan"))
    with pytest.raises(ValueError, match="2 elements|3 elements"):
        v.translated([1.0, 2.0])


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.nii"):
        load_volume(tmp_path / "nothere.nii")
    bad = tmp_path / "vol.xyz"
    bad.write_text("x")
    with pytest.raises(ValueError, match="vol.xyz"):
        load_volume(bad)
    with pytest.raises(ValueError, match="vol.xyz"):
        save_volume(make_volume(), bad)
    with pytest.raises(TypeError, match="ndarray"):
        save_volume(np.zeros((2, 2, 2)), tmp_path / "a.npz")
    corrupt = tmp_path / "c.nii.gz"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="c.nii.gz"):
        load_volume(corrupt)
    np.savez(tmp_path / "other.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match="missing arrays"):
        load_volume(tmp_path / "other.npz")
    (tmp_path / "two.mha").write_bytes(
        b"ObjectType = Image\nNDims = 2\nDimSize = 2 2\nElementType = MET_SHORT\n"
        b"ElementDataFile = LOCAL\n" + bytes(8))
    with pytest.raises(ValueError, match="NDims = 2"):
        load_volume(tmp_path / "two.mha")
    (tmp_path / "short.mha").write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\n"
        b"ElementDataFile = LOCAL\n" + bytes(8))
    with pytest.raises(ValueError, match="expected 16"):
        load_volume(tmp_path / "short.mha")
    with pytest.raises(FileNotFoundError, match="nodir"):
        save_volume(make_volume(), tmp_path / "nodir" / "a.nrrd")


def test_nifti_4d_rejected(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.int16), np.eye(4)), str(tmp_path / "t.nii"))
    with pytest.raises(ValueError, match=r"\(2, 2, 2, 3\)"):
        load_volume(tmp_path / "t.nii")


def test_nifti_scaled_integers_become_int16(tmp_path):
    import nibabel as nib

    raw = np.array([0, 1024, 2048, 4000], dtype=np.uint16).reshape(4, 1, 1)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    v = load_volume(tmp_path / "s.nii.gz")
    assert v.data.dtype == np.int16
    np.testing.assert_array_equal(v.data.ravel(), [-1024, 0, 1024, 2976])
