"""Volume files: readers and writers for CT volumes (:class:`fluororeg.core.volume.Volume`).

Formats handled by :func:`load_volume` / :func:`save_volume`: NIfTI-1 (``.nii``,
``.nii.gz``, via nibabel), NRRD (``.nrrd``, ``.nhdr``, via pynrrd), MetaImage (``.mha``,
``.mhd``, own reader/writer), a folder of single-frame DICOM files (reading only, via
pydicom), multi-page TIFF stacks (``.tif``, ``.tiff``, via tifffile; Autoscoper's volume
format) and our own ``.npz`` (arrays ``data``, ``spacing``, ``origin``, ``direction``).

A TIFF stack carries neither a voxel size nor the meaning of its grey levels, so
:func:`load_volume` needs both for one: ``voxel_size_mm=(sx, sy, sz)`` (column, row, page
spacing; or take them from an Autoscoper trial ``.cfg`` with
:func:`fluororeg.io.autoscoper.read_trial_cfg`) and ``intensity=``, an
:class:`IntensityMapping` (``"hu"``: the values are Hounsfield units; ``"raw"``: HU = slope *
value + offset; ``"mu"``: the values are linear attenuation, mu = slope * value + offset in
1/mm, converted to HU with the water value). Nothing is guessed: a missing one is an error.
The stack is placed in Autoscoper's volume frame (see :mod:`fluororeg.io.autoscoper`), which
becomes its physical frame, so poses of it map to Autoscoper's ``.tra`` files exactly.
Physical frames are converted to LPS on reading (see :mod:`fluororeg.core.volume`). NIfTI
stores its geometry as float32, so geometry survives a NIfTI round trip only to about 1e-6
relative; the other formats keep float64 geometry exactly.
"""

from __future__ import annotations

import os
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from fluororeg.core.volume import ORTHO_TOL, Volume

__all__ = ["load_volume", "save_volume", "load_tiff_stack", "IntensityMapping", "SUPPORTED_EXTENSIONS"]

PathLike = Union[str, "os.PathLike[str]"]

#: Extensions understood by :func:`load_volume` (a folder is read as a DICOM series).
SUPPORTED_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npz", ".tif", ".tiff")

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _kind(path: Path) -> str:
    name = path.name.lower()
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npz", ".tif", ".tiff"):
        if name.endswith(ext):
            return ext
    return ""


def _atomic_target(path: Path, suffix: str):
    """A temporary path next to ``path`` ending with ``suffix``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _chmod_default(p: Path) -> None:
    """Give a mkstemp file (mode 0600) the permissions a plain open() would have."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(p, 0o666 & ~mask)


def load_volume(path: PathLike, *, voxel_size_mm=None, intensity: "IntensityMapping | str | None" = None,
                flip=(0, 0, 0)) -> Volume:
    """Read a volume; the format is chosen by extension, a folder is read as a DICOM series.

    A single ``.dcm`` file selects the series it belongs to within its folder. A TIFF stack
    needs ``voxel_size_mm`` and ``intensity`` (see the module docstring and
    :func:`load_tiff_stack`; ``flip`` is Autoscoper's ``VolumeFlip``). For the other formats
    ``intensity`` (default: the values are HU) maps the stored values to HU and
    ``voxel_size_mm`` must not be given (their files carry it).
    """
    p = Path(path)
    if _kind(p) in (".tif", ".tiff"):
        if voxel_size_mm is None or intensity is None:
            raise ValueError(
                f"{str(p)!r} is a TIFF stack, which records neither its voxel size nor what its grey levels "
                f"mean: give voxel_size_mm=(sx, sy, sz) (or an Autoscoper trial .cfg's VoxelSize) and "
                f"intensity= 'hu', IntensityMapping('raw', slope, offset) or IntensityMapping('mu', ...)"
                f" (got voxel_size_mm={voxel_size_mm!r}, intensity={intensity!r})")
        return load_tiff_stack(p, voxel_size_mm, intensity, flip=flip)
    if voxel_size_mm is not None:
        raise ValueError(f"voxel_size_mm is only for TIFF stacks; {str(p)!r} records its own voxel size")
    vol = _load_volume_file(p)
    if intensity is None:
        return vol
    mapping = IntensityMapping.parse(intensity)
    return Volume(mapping.to_hu(np.asarray(vol.data)), vol.spacing, vol.origin, vol.direction)


# ---------------------------------------------------------------------- intensity
@dataclass(frozen=True)
class IntensityMapping:
    """What a volume's stored values mean, as a map to Hounsfield units (never guessed).

    * ``kind="hu"``: the values are HU already (slope / offset must stay 1 / 0);
    * ``kind="raw"``: ``HU = slope * value + offset`` (e.g. a DICOM rescale, or 12-bit CT
      stored as HU + 1024: slope 1, offset -1024);
    * ``kind="mu"``: ``mu = slope * value + offset`` is the linear attenuation in 1/mm (a
      "calibrated" volume); ``HU = 1000 * (mu / mu_water_per_mm - 1)``.
    """

    kind: str = "hu"
    slope: float = 1.0
    offset: float = 0.0
    mu_water_per_mm: float = 0.02

    def __post_init__(self):
        if self.kind not in ("hu", "raw", "mu"):
            raise ValueError(f"intensity kind {self.kind!r}: expected 'hu', 'raw' or 'mu'")
        for name in ("slope", "offset", "mu_water_per_mm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
                raise ValueError(f"intensity {name} = {v!r}: expected a finite number")
        if self.slope == 0:
            raise ValueError("intensity slope = 0: every voxel would get the same value")
        if self.mu_water_per_mm <= 0:
            raise ValueError(f"mu_water_per_mm = {self.mu_water_per_mm!r}: expected a positive value (1/mm)")
        if self.kind == "hu" and (self.slope != 1 or self.offset != 0):
            raise ValueError(f"intensity 'hu' takes no slope/offset (got {self.slope}, {self.offset}); use 'raw'")

    @classmethod
    def parse(cls, value) -> "IntensityMapping":
        """An IntensityMapping from itself, ``"hu"``, or text ``"raw:SLOPE:OFFSET"`` /
        ``"mu:SLOPE:OFFSET[:MU_WATER]"`` (the CLI's ``--intensity``)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, str):
            raise TypeError(f"intensity must be an IntensityMapping or text like 'hu', 'raw:1:-1024', 'mu:1e-4:0', "
                            f"got {value!r}")
        parts = value.strip().split(":")
        try:
            nums = [float(x) for x in parts[1:]]
        except ValueError:
            raise ValueError(f"intensity {value!r}: expected 'hu', 'raw:SLOPE:OFFSET' or "
                             f"'mu:SLOPE:OFFSET[:MU_WATER]'") from None
        kind = parts[0].lower()
        if (kind == "hu" and nums) or (kind == "raw" and len(nums) != 2) or (kind == "mu" and len(nums) not in (2, 3)):
            raise ValueError(f"intensity {value!r}: expected 'hu', 'raw:SLOPE:OFFSET' or 'mu:SLOPE:OFFSET[:MU_WATER]'")
        return cls(kind, *nums)

    def to_hu(self, values: np.ndarray) -> np.ndarray:
        """HU of the stored ``values``: int16 when the result is whole and fits, else float32."""
        v = np.asarray(values)
        if self.kind == "hu":
            return v
        x = v.astype(np.float64) * self.slope + self.offset
        if self.kind == "mu":
            x = 1000.0 * (x / self.mu_water_per_mm - 1.0)
        if np.all(x == np.rint(x)) and x.min() >= -32768 and x.max() <= 32767:
            return x.astype(np.int16)
        return x.astype(np.float32)

    def to_json(self) -> dict:
        return {"kind": self.kind, "slope": float(self.slope), "offset": float(self.offset),
                "mu_water_per_mm": float(self.mu_water_per_mm)}


def load_tiff_stack(path: PathLike, voxel_size_mm, intensity, *, flip=(0, 0, 0)) -> Volume:
    """A multi-page TIFF (one page per slice: page k, row j, column i = ``data[k, j, i]``) as a
    Volume in HU (``intensity``: see :class:`IntensityMapping`) with voxel size
    ``voxel_size_mm`` = (column, row, page) spacing in mm, placed in Autoscoper's volume frame
    with Autoscoper's ``VolumeFlip`` ``flip`` (:func:`fluororeg.io.autoscoper.autoscoper_volume_geometry`)."""
    import tifffile

    from fluororeg.io.autoscoper import autoscoper_volume_geometry

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"TIFF stack not found: {str(p)!r}")
    mapping = IntensityMapping.parse(intensity)
    try:
        arr = tifffile.imread(str(p))
    except Exception as exc:  # noqa: BLE001 - any decoder failure: name the file
        raise ValueError(f"cannot read {str(p)!r} as a TIFF stack: {exc}") from exc
    if arr.ndim == 2:
        raise ValueError(f"{str(p)!r} holds a single {arr.shape[1]} x {arr.shape[0]} page: a volume needs one page "
                         f"per slice")
    if arr.ndim != 3:
        raise ValueError(f"{str(p)!r}: expected grey pages (pages, rows, columns), got shape {arr.shape}")
    spacing = _vec3_positive(voxel_size_mm, "voxel_size_mm")
    origin, direction = autoscoper_volume_geometry(arr.shape, spacing, flip)
    return Volume(mapping.to_hu(arr), spacing, origin, direction)


def _vec3_positive(value, name: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {value!r}: expected three positive numbers (mm)") from None
    if a.shape != (3,) or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"{name} = {value!r}: expected three positive numbers (mm)")
    return a


def _load_volume_file(p: Path) -> Volume:
    if not p.exists():
        raise FileNotFoundError(f"volume file or folder not found: {str(p)!r}")
    if p.is_dir():
        return _read_dicom_series(p)
    if p.name.lower().endswith(".dcm"):
        return _read_dicom_series(p.parent, select_file=p)
    kind = _kind(p)
    try:
        if kind in (".nii", ".nii.gz"):
            return _read_nifti(p)
        if kind in (".nrrd", ".nhdr"):
            return _read_nrrd(p)
        if kind in (".mha", ".mhd"):
            return _read_metaimage(p)
        if kind == ".npz":
            return _read_npz(p)
    except (ValueError, TypeError, FileNotFoundError):
        raise
    except Exception as exc:  # corrupt files: name the path, keep the cause
        raise ValueError(f"cannot read volume {str(p)!r} as {kind}: {exc}") from exc
    raise ValueError(
        f"unknown volume format for {str(p)!r}: expected one of {', '.join(SUPPORTED_EXTENSIONS)} "
        f"or a folder of DICOM files")


def save_volume(volume: Volume, path: PathLike) -> None:
    """Write a volume as NIfTI, NRRD, MetaImage or npz, chosen by the extension of ``path``.

    Single-file formats are written to a temporary file and renamed into place.
    """
    if not isinstance(volume, Volume):
        raise TypeError(f"save_volume expects a Volume, got {type(volume).__name__}")
    p = Path(path)
    kind = _kind(p)
    if kind in (".tif", ".tiff"):
        raise ValueError(f"{str(p)!r}: writing TIFF stacks is fluororeg.io.autoscoper.write_autoscoper_volume's job "
                         f"(it needs the intensity mapping back to Autoscoper's unsigned integers)")
    if kind == "":
        raise ValueError(
            f"unknown volume format for {str(p)!r}: expected one of {', '.join(SUPPORTED_EXTENSIONS)} "
            f"(DICOM writing is not supported)")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"folder of {str(p)!r} does not exist: {str(p.parent)!r}")
    if kind in (".mhd", ".nhdr"):  # header + separate data file
        if kind == ".mhd":
            _write_metaimage(volume, p)
        else:
            _write_nrrd(volume, p)
        return
    tmp = _atomic_target(p, kind)
    try:
        if kind in (".nii", ".nii.gz"):
            _write_nifti(volume, tmp)
        elif kind == ".nrrd":
            _write_nrrd(volume, tmp)
        elif kind == ".mha":
            _write_metaimage(volume, tmp)
        elif kind == ".npz":
            _write_npz(volume, tmp)
        _chmod_default(tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------- npz
def _read_npz(p: Path) -> Volume:
    with np.load(p, allow_pickle=False) as z:
        missing = [k for k in ("data", "spacing", "origin", "direction") if k not in z.files]
        if missing:
            raise ValueError(f"{str(p)!r} is not a fluororeg volume npz: missing arrays {missing} "
                             f"(has {z.files})")
        return Volume(z["data"], z["spacing"], z["origin"], z["direction"])


def _write_npz(v: Volume, p: Path) -> None:
    with open(p, "wb") as fh:
        np.savez_compressed(fh, data=np.asarray(v.data), spacing=np.asarray(v.spacing),
                            origin=np.asarray(v.origin), direction=np.asarray(v.direction))


# ---------------------------------------------------------------------- NIfTI
def _squeeze_to_3d(arr: np.ndarray, p: Path) -> np.ndarray:
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{str(p)!r}: expected a 3-D volume, got data of shape {arr.shape}")
    return arr


def _geometry_from_matrix(m3: np.ndarray, p: Path) -> Tuple[np.ndarray, np.ndarray]:
    spacing = np.linalg.norm(m3, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"{str(p)!r}: degenerate voxel-to-physical matrix {m3.tolist()}")
    direction = m3 / spacing
    err = np.abs(direction.T @ direction - np.eye(3)).max()
    if err > ORTHO_TOL:
        raise ValueError(f"{str(p)!r}: sheared voxel grid (axes not orthogonal, error {err:.3g}) "
                         f"in matrix {m3.tolist()}; only rigid orientations are supported")
    return spacing, direction


def _read_nifti(p: Path) -> Volume:
    import nibabel as nib

    img = nib.load(str(p))
    arr = _squeeze_to_3d(np.asanyarray(img.dataobj), p)
    if np.issubdtype(arr.dtype, np.floating) and img.get_data_dtype().kind in "iu":
        # integer storage with scl_slope/inter: keep integers when the scaled values are
        rounded = np.rint(arr)
        if np.array_equal(rounded, arr) and arr.min() >= -32768 and arr.max() <= 32767:
            arr = rounded.astype(np.int16)
        else:
            arr = arr.astype(np.float32)
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32) if img.get_data_dtype() == np.float32 else arr
    affine = np.asarray(img.affine, dtype=np.float64)
    spacing, direction = _geometry_from_matrix(affine[:3, :3], p)
    data = np.ascontiguousarray(arr.transpose(2, 1, 0))
    return Volume(data, spacing, _LPS_FROM_RAS @ affine[:3, 3], _LPS_FROM_RAS @ direction)


def _write_nifti(v: Volume, p: Path) -> None:
    import nibabel as nib

    affine = np.eye(4)
    affine[:3, :] = _LPS_FROM_RAS @ v.physical_from_voxel[:3, :]
    arr = np.ascontiguousarray(np.asarray(v.data).transpose(2, 1, 0))
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    img = nib.Nifti1Image(arr, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(p))


# ---------------------------------------------------------------------- NRRD
_NRRD_SPACES = {
    "left-posterior-superior": np.eye(3), "lps": np.eye(3),
    "right-anterior-superior": _LPS_FROM_RAS, "ras": _LPS_FROM_RAS,
    "left-anterior-superior": np.diag([1.0, -1.0, 1.0]), "las": np.diag([1.0, -1.0, 1.0]),
    # DICOM scanner coordinates are LPS by definition
    "scanner-xyz": np.eye(3),
}


def _read_nrrd(p: Path) -> Volume:
    import nrrd

    arr, hdr = nrrd.read(str(p), index_order="C")
    if arr.ndim != 3:
        raise ValueError(f"{str(p)!r}: expected a 3-D volume, got NRRD dimension {arr.ndim} "
                         f"(shape {arr.shape})")
    space = hdr.get("space")
    if space is not None:
        key = str(space).strip().lower()
        if key == "3d-right-handed":
            warnings.warn(f"{p}: NRRD space '3D-right-handed' has no anatomical meaning; "
                          f"reading it as LPS", stacklevel=3)
            flip = np.eye(3)
        elif key not in _NRRD_SPACES:
            raise ValueError(f"{str(p)!r}: unsupported NRRD space {space!r}; expected LPS, RAS, "
                             f"LAS or scanner-xyz for a 3-D volume")
        else:
            flip = _NRRD_SPACES[key]
        sd = hdr.get("space directions")
        if sd is None:
            raise ValueError(f"{str(p)!r}: NRRD has 'space' {space!r} but no 'space directions'")
        sd = np.array(sd, dtype=np.float64)
        if sd.shape != (3, 3) or not np.all(np.isfinite(sd)):
            raise ValueError(f"{str(p)!r}: expected 3 spatial 'space directions', got {hdr['space directions']!r}")
        m3 = sd.T  # rows of 'space directions' are the per-axis vectors (fastest axis first)
        spacing, direction = _geometry_from_matrix(m3, p)
        origin = np.array(hdr.get("space origin", np.zeros(3)), dtype=np.float64)
        return Volume(arr, spacing, flip @ origin, flip @ direction)
    if "space dimension" in hdr or "space directions" in hdr:
        raise ValueError(f"{str(p)!r}: NRRD has 'space directions' but no 'space' field; "
                         f"cannot tell LPS from RAS")
    spacings = hdr.get("spacings")
    if spacings is None:
        raise ValueError(f"{str(p)!r}: NRRD has neither 'space directions' nor 'spacings'; "
                         f"the voxel size is unknown")
    spacing = np.array(spacings, dtype=np.float64)  # fastest axis first = (i, j, k)
    warnings.warn(f"{p}: NRRD without 'space': assuming LPS axes and origin 0", stacklevel=3)
    return Volume(arr, spacing, np.zeros(3), np.eye(3))


def _write_nrrd(v: Volume, p: Path) -> None:
    import nrrd

    header = {
        "space": "left-posterior-superior",
        "space directions": (v.direction * v.spacing[None, :]).T,
        "space origin": np.asarray(v.origin, dtype=np.float64),
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    nrrd.write(str(p), np.ascontiguousarray(v.data), header, index_order="C",
               detached_header=p.name.lower().endswith(".nhdr"))


# ---------------------------------------------------------------------- MetaImage
_MET_TYPES = {
    "MET_UCHAR": np.uint8, "MET_CHAR": np.int8, "MET_USHORT": np.uint16,
    "MET_SHORT": np.int16, "MET_UINT": np.uint32, "MET_INT": np.int32,
    "MET_ULONG_LONG": np.uint64, "MET_LONG_LONG": np.int64,
    "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64,
}
_MET_FROM_DTYPE = {np.dtype(t): k for k, t in _MET_TYPES.items()}
_MET_FROM_DTYPE[np.dtype(np.uint64)] = "MET_ULONG_LONG"


def _parse_metaimage_header(p: Path) -> Tuple[Dict[str, str], bytes]:
    """Header fields (keys as written) and the bytes that follow ElementDataFile."""
    raw = p.read_bytes()
    fields: Dict[str, str] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        line_b = raw[pos:] if end < 0 else raw[pos:end]
        pos = len(raw) if end < 0 else end + 1
        try:
            line = line_b.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{str(p)!r}: not a MetaImage header (binary data before ElementDataFile)")
        if line and "=" not in line:
            raise ValueError(f"{str(p)!r}: malformed MetaImage header line {line!r}")
        if line:
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                return fields, raw[pos:]
        if end < 0:
            raise ValueError(f"{str(p)!r}: MetaImage header has no ElementDataFile line")


def _met_bool(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def _read_metaimage(p: Path) -> Volume:
    f, tail = _parse_metaimage_header(p)
    get = f.get
    otype = get("ObjectType", "Image")
    if otype.lower() != "image":
        raise ValueError(f"{str(p)!r}: MetaImage ObjectType {otype!r}, expected 'Image'")
    ndims = int(get("NDims", "0"))
    if ndims != 3:
        raise ValueError(f"{str(p)!r}: MetaImage NDims = {ndims}, expected 3")
    dims = [int(x) for x in get("DimSize", "").split()]
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"{str(p)!r}: MetaImage DimSize {get('DimSize')!r}, expected 3 positive integers")
    channels = int(get("ElementNumberOfChannels", "1"))
    if channels != 1:
        raise ValueError(f"{str(p)!r}: ElementNumberOfChannels = {channels}, expected 1")
    etype = get("ElementType", "")
    if etype not in _MET_TYPES:
        raise ValueError(f"{str(p)!r}: unsupported MetaImage ElementType {etype!r}; expected one "
                         f"of {sorted(_MET_TYPES)}")
    msb = _met_bool(get("BinaryDataByteOrderMSB", get("ElementByteOrderMSB", "False")))
    dtype = np.dtype(_MET_TYPES[etype]).newbyteorder(">" if msb else "<")
    if "BinaryData" in f and not _met_bool(f["BinaryData"]):
        raise ValueError(f"{str(p)!r}: ASCII MetaImage data (BinaryData = False) is not supported")
    spacing_s = get("ElementSpacing", get("ElementSize", "1 1 1"))
    spacing = np.array([float(x) for x in spacing_s.split()])
    offset_s = get("Offset", get("Position", get("Origin", "0 0 0")))
    origin = np.array([float(x) for x in offset_s.split()])
    tm_s = get("TransformMatrix", get("Rotation", get("Orientation", "1 0 0 0 1 0 0 0 1")))
    tm = np.array([float(x) for x in tm_s.split()])
    if tm.size != 9:
        raise ValueError(f"{str(p)!r}: TransformMatrix {tm_s!r}, expected 9 numbers")
    # ITK: TransformMatrix[a*3 + b] = component b of the direction of index axis a
    direction = tm.reshape(3, 3).T
    n_bytes = int(np.prod(dims)) * dtype.itemsize
    compressed = _met_bool(get("CompressedData", "False"))
    edf = f["ElementDataFile"]
    if edf.upper() == "LOCAL":
        payload = tail
    else:
        if edf.upper().startswith("LIST") or "%" in edf or len(edf.split()) > 1:
            raise ValueError(f"{str(p)!r}: multi-file ElementDataFile {edf!r} is not supported; "
                             f"expected LOCAL or a single file name")
        data_path = Path(edf) if os.path.isabs(edf) else p.parent / edf
        if not data_path.exists():
            raise FileNotFoundError(f"{str(p)!r}: data file {str(data_path)!r} not found")
        payload = data_path.read_bytes()
        header_size = int(get("HeaderSize", "0"))
        if header_size == -1 and not compressed:
            payload = payload[len(payload) - n_bytes:]
        elif header_size > 0:
            payload = payload[header_size:]
    if compressed:
        try:
            payload = zlib.decompressobj(47).decompress(payload)  # zlib or gzip wrapper
        except zlib.error as exc:
            raise ValueError(f"{str(p)!r}: corrupt compressed MetaImage data: {exc}") from exc
    if len(payload) < n_bytes:
        raise ValueError(f"{str(p)!r}: MetaImage data has {len(payload)} bytes, expected {n_bytes} "
                         f"for DimSize {dims} of {etype}")
    arr = np.frombuffer(payload[:n_bytes], dtype=dtype).reshape(dims[2], dims[1], dims[0])
    arr = arr.astype(dtype.newbyteorder("="))
    return Volume(arr, spacing, origin, direction)


def _anatomical_orientation(direction: np.ndarray) -> str:
    # ITK naming: the axis points *from* this side, e.g. +x (toward L) is 'R'
    letters = (("R", "L"), ("A", "P"), ("I", "S"))
    out = ""
    for c in range(3):
        axis = int(np.argmax(np.abs(direction[:, c])))
        out += letters[axis][0] if direction[axis, c] > 0 else letters[axis][1]
    return out


def _fmt(values: np.ndarray) -> str:
    return " ".join(repr(float(x)) for x in np.asarray(values).ravel())


def _write_metaimage(v: Volume, p: Path) -> None:
    data = np.asarray(v.data)
    if data.dtype not in _MET_FROM_DTYPE:
        raise ValueError(f"cannot write dtype {data.dtype} to MetaImage {str(p)!r}")
    raw = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()
    local = p.name.lower().endswith(".mha")
    if local:
        payload = zlib.compress(raw, 6)
    else:
        payload = raw
    nz, ny, nx = data.shape
    lines = [
        "ObjectType = Image",
        "NDims = 3",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        f"CompressedData = {'True' if local else 'False'}",
    ]
    if local:
        lines.append(f"CompressedDataSize = {len(payload)}")
    lines += [
        f"TransformMatrix = {_fmt(v.direction.T)}",
        f"Offset = {_fmt(v.origin)}",
        "CenterOfRotation = 0 0 0",
        f"AnatomicalOrientation = {_anatomical_orientation(v.direction)}",
        f"ElementSpacing = {_fmt(v.spacing)}",
        f"DimSize = {nx} {ny} {nz}",
        f"ElementType = {_MET_FROM_DTYPE[data.dtype]}",
    ]
    if local:
        lines.append("ElementDataFile = LOCAL")
        with open(p, "wb") as fh:
            fh.write(("\n".join(lines) + "\n").encode("ascii"))
            fh.write(payload)
        return
    raw_path = p.with_suffix(".raw")
    lines.append(f"ElementDataFile = {raw_path.name}")
    tmp_raw = _atomic_target(raw_path, ".raw")
    tmp_hdr = _atomic_target(p, ".mhd")
    try:
        tmp_raw.write_bytes(payload)
        tmp_hdr.write_text("\n".join(lines) + "\n", encoding="ascii")
        _chmod_default(tmp_raw)
        _chmod_default(tmp_hdr)
        os.replace(tmp_raw, raw_path)
        os.replace(tmp_hdr, p)
    finally:
        for t in (tmp_raw, tmp_hdr):
            if t.exists():
                t.unlink()


# ---------------------------------------------------------------------- DICOM
def _read_dicom_series(folder: Path, select_file: Optional[Path] = None) -> Volume:
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(q for q in folder.iterdir() if q.is_file() and q.name.upper() != "DICOMDIR")
    slices = []
    for q in files:
        try:
            ds = pydicom.dcmread(str(q))
        except (InvalidDicomError, OSError, EOFError):
            continue
        if "PixelData" not in ds:
            continue
        slices.append((q, ds))
    if not slices:
        raise ValueError(f"no DICOM image files found in folder {str(folder)!r}")
    if select_file is not None:
        sel = [ds for q, ds in slices if q.resolve() == select_file.resolve()]
        if not sel:
            raise ValueError(f"{str(select_file)!r} is not a readable DICOM image")
        uid = getattr(sel[0], "SeriesInstanceUID", None)
        slices = [(q, ds) for q, ds in slices if getattr(ds, "SeriesInstanceUID", None) == uid]
    uids = sorted({str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in slices})
    if len(uids) > 1:
        raise ValueError(f"folder {str(folder)!r} mixes {len(uids)} DICOM series {uids}; "
                         f"put one series per folder (or pass one of its .dcm files)")
    for q, ds in slices:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
            raise ValueError(f"{str(q)!r}: multi-frame DICOM is not supported (one slice per file expected)")
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if tag not in ds:
                raise ValueError(f"{str(q)!r}: DICOM slice lacks {tag}; cannot place it in space")
    if len(slices) < 2:
        raise ValueError(f"folder {str(folder)!r} holds a single DICOM slice; a volume needs at least 2")

    q0, ds0 = slices[0]
    iop0 = np.array(ds0.ImageOrientationPatient, dtype=np.float64)
    ps0 = np.array(ds0.PixelSpacing, dtype=np.float64)
    rows0, cols0 = int(ds0.Rows), int(ds0.Columns)
    for q, ds in slices[1:]:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=np.float64), iop0, atol=1e-4):
            raise ValueError(f"{str(q)!r}: ImageOrientationPatient {list(ds.ImageOrientationPatient)} "
                             f"differs from {iop0.tolist()} in {str(q0)!r}")
        if not np.allclose(np.array(ds.PixelSpacing, dtype=np.float64), ps0, rtol=1e-4):
            raise ValueError(f"{str(q)!r}: PixelSpacing {list(ds.PixelSpacing)} differs from {ps0.tolist()}")
        if (int(ds.Rows), int(ds.Columns)) != (rows0, cols0):
            raise ValueError(f"{str(q)!r}: slice size {int(ds.Rows)}x{int(ds.Columns)} differs from "
                             f"{rows0}x{cols0}")
    # IOP: first triple = direction of increasing column index (along a row) = i axis,
    # second triple = direction of increasing row index (down a column) = j axis.
    row_dir = iop0[:3] / np.linalg.norm(iop0[:3])
    col_dir = iop0[3:] / np.linalg.norm(iop0[3:])
    if abs(row_dir @ col_dir) > 1e-3:
        raise ValueError(f"{str(q0)!r}: ImageOrientationPatient {iop0.tolist()} is not orthogonal")
    normal = np.cross(row_dir, col_dir)
    pos = np.array([np.array(ds.ImagePositionPatient, dtype=np.float64) for _, ds in slices])
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    dist = dist[order]
    pos = pos[order]
    slices = [slices[i] for i in order]
    steps = np.diff(dist)
    if np.any(steps <= 1e-6):
        k = int(np.argmin(steps))
        raise ValueError(f"DICOM slices {str(slices[k][0])!r} and {str(slices[k + 1][0])!r} in "
                         f"{str(folder)!r} share the position {dist[k]:.4f} mm along the slice normal")
    dz = float(np.median(steps))
    tol = max(0.01, 0.01 * dz)
    if np.max(np.abs(steps - dz)) > tol:
        raise ValueError(f"non-uniform DICOM slice spacing in {str(folder)!r}: steps range "
                         f"{steps.min():.4f}..{steps.max():.4f} mm (missing slices?)")
    span = pos[-1] - pos[0]
    perp = span - (span @ normal) * normal
    if np.linalg.norm(perp) > max(0.01, 1e-3 * np.linalg.norm(span)):
        raise ValueError(f"DICOM series in {str(folder)!r} is sheared (gantry tilt): slice positions "
                         f"drift {np.linalg.norm(perp):.3f} mm off the slice normal")

    raw_slices, slopes, inters = [], [], []
    for q, ds in slices:
        try:
            px = ds.pixel_array
        except Exception as exc:
            raise ValueError(f"{str(q)!r}: cannot decode DICOM pixel data: {exc}") from exc
        if px.shape != (rows0, cols0):
            raise ValueError(f"{str(q)!r}: pixel array shape {px.shape}, expected {(rows0, cols0)}")
        raw_slices.append(px)
        slopes.append(float(getattr(ds, "RescaleSlope", 1.0) or 1.0))
        inters.append(float(getattr(ds, "RescaleIntercept", 0.0) or 0.0))
    raw = np.stack(raw_slices)  # [k, j(row), i(column)]
    slopes_a = np.array(slopes)
    inters_a = np.array(inters)
    hu = raw.astype(np.float64) * slopes_a[:, None, None] + inters_a[:, None, None]
    if (np.all(slopes_a == np.rint(slopes_a)) and np.all(inters_a == np.rint(inters_a))
            and hu.min() >= -32768 and hu.max() <= 32767):
        data = hu.astype(np.int16)
    else:
        data = hu.astype(np.float32)
    # PixelSpacing = (row spacing: between rows, along j; column spacing: along i)
    spacing = np.array([ps0[1], ps0[0], dz])
    direction = np.column_stack([row_dir, col_dir, normal])
    return Volume(data, spacing, pos[0], direction)
