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

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union

import numpy as np

from fluororeg.core.volume import ORTHO_TOL, Volume

from fluororeg.io.atomic import chmod_default, temporary_path_beside
from fluororeg.io.dicom import read_dicom_series
from fluororeg.io.limits import (MAX_FRAMES, MAX_VOLUME_BYTES, check_regular_file, check_volume_shape, npz_member_header,
                                 open_npz, open_regular)
from fluororeg.io.metaimage import read_metaimage, write_metaimage

__all__ = ["load_volume", "save_volume", "load_tiff_stack", "is_tiff_stack", "IntensityMapping", "SUPPORTED_EXTENSIONS"]

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


def is_tiff_stack(path: PathLike) -> bool:
    """Whether :func:`load_volume` reads ``path`` as a TIFF stack (which records neither its voxel
    size nor what its grey levels mean: it needs ``voxel_size_mm`` and ``intensity``)."""
    return _kind(Path(path)) in (".tif", ".tiff")


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
    if is_tiff_stack(p):
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


def _tiff_page_count(path: Path, limit: int) -> int:
    """The number of pages (IFDs) of the TIFF file ``path``, by following its chain of IFD
    offsets: a chain that loops, points outside the file or is longer than ``limit`` is a
    ValueError (tifffile follows such a chain for minutes). Classic and BigTIFF."""
    import struct

    size = path.stat().st_size
    with open_regular(path, "TIFF stack") as f:
        head = f.read(16)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            raise ValueError(f"{str(path)!r} is not a TIFF file (no II/MM byte-order mark)")
        e = "<" if head[:2] == b"II" else ">"
        version = struct.unpack(e + "H", head[2:4])[0]
        if version == 42:
            offset, count_fmt, count_size, entry_size, next_fmt = struct.unpack(e + "I", head[4:8])[0], "H", 2, 12, "I"
        elif version == 43 and len(head) >= 16:
            offset, count_fmt, count_size, entry_size, next_fmt = struct.unpack(e + "Q", head[8:16])[0], "Q", 8, 20, "Q"
        else:
            raise ValueError(f"{str(path)!r}: TIFF version {version}: expected 42 (TIFF) or 43 (BigTIFF)")
        seen, pages = set(), 0
        while offset:
            if offset in seen or offset + count_size > size:
                raise ValueError(f"{str(path)!r}: damaged TIFF: page {pages + 1}'s offset {offset} "
                                 f"{'repeats an earlier page' if offset in seen else 'lies beyond the file'}")
            seen.add(offset)
            pages += 1
            if pages > limit:
                raise ValueError(f"{str(path)!r} has more than {limit:,} pages (fluororeg.io.limits.MAX_FRAMES)")
            f.seek(offset)
            n = struct.unpack(e + count_fmt, f.read(count_size))[0]
            next_at = offset + count_size + n * entry_size
            if next_at + struct.calcsize(next_fmt) > size:
                raise ValueError(f"{str(path)!r}: damaged TIFF: page {pages} declares {n} tags, beyond the file's end")
            f.seek(next_at)
            offset = struct.unpack(e + next_fmt, f.read(struct.calcsize(next_fmt)))[0]
    return pages


def load_tiff_stack(path: PathLike, voxel_size_mm, intensity, *, flip=(0, 0, 0)) -> Volume:
    """A multi-page TIFF (one page per slice: page k, row j, column i = ``data[k, j, i]``) as a
    Volume in HU (``intensity``: see :class:`IntensityMapping`) with voxel size
    ``voxel_size_mm`` = (column, row, page) spacing in mm, placed in Autoscoper's volume frame
    with Autoscoper's ``VolumeFlip`` ``flip`` (:func:`fluororeg.io.autoscoper.autoscoper_volume_geometry`)."""
    import tifffile

    from fluororeg.io.autoscoper import autoscoper_volume_geometry

    p = Path(path)
    check_regular_file(p, "TIFF stack", max_bytes=MAX_VOLUME_BYTES + (64 << 20))
    mapping = IntensityMapping.parse(intensity)
    _tiff_page_count(p, MAX_FRAMES)  # a sound chain of pages before tifffile walks it
    try:
        with tifffile.TiffFile(str(p)) as tif:
            series = tif.series[0]
            # the pages' declared size before any pixel is decoded
            check_volume_shape(series.shape, series.dtype.itemsize, f"{str(p)!r} (TIFF stack)")
            arr = series.asarray()
    except ValueError as exc:
        if "fluororeg.io.limits" in str(exc) or "volume size" in str(exc):
            raise
        raise ValueError(f"cannot read {str(p)!r} as a TIFF stack: {exc}") from exc
    except MemoryError:
        raise
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
        return read_dicom_series(p)
    # a device (/dev/zero), FIFO or socket would be read forever or block: refuse it unopened
    check_regular_file(p, "volume file", max_bytes=MAX_VOLUME_BYTES + (64 << 20))
    if p.name.lower().endswith(".dcm"):
        return read_dicom_series(p.parent, select_file=p)
    kind = _kind(p)
    try:
        if kind in (".nii", ".nii.gz"):
            return _read_nifti(p)
        if kind in (".nrrd", ".nhdr"):
            return _read_nrrd(p)
        if kind in (".mha", ".mhd"):
            return read_metaimage(p)
        if kind == ".npz":
            return _read_npz(p)
    except (ValueError, TypeError, FileNotFoundError, MemoryError):
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
            write_metaimage(volume, p)
        else:
            _write_nrrd(volume, p)
        return
    tmp = temporary_path_beside(p, kind)
    try:
        if kind in (".nii", ".nii.gz"):
            _write_nifti(volume, tmp)
        elif kind == ".nrrd":
            _write_nrrd(volume, tmp)
        elif kind == ".mha":
            write_metaimage(volume, tmp)
        elif kind == ".npz":
            _write_npz(volume, tmp)
        chmod_default(tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------------- npz
def _read_npz(p: Path) -> Volume:
    with open_npz(p, "a fluororeg volume") as z:
        missing = [k for k in ("data", "spacing", "origin", "direction") if k not in z.files]
        if missing:
            raise ValueError(f"{str(p)!r} is not a fluororeg volume npz: missing arrays {missing} "
                             f"(has {z.files})")
        # declared sizes first: a small compressed member must not inflate to gigabytes
        shape, dtype = npz_member_header(z, "data")
        check_volume_shape(shape, dtype.itemsize, f"{str(p)!r} (npz array 'data')")
        for name in ("spacing", "origin", "direction"):
            shape, _ = npz_member_header(z, name)
            if int(np.prod(shape)) > 9:
                raise ValueError(f"{str(p)!r}: npz array {name!r} has shape {shape}, expected 3 or 3 x 3 values")
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

    img = nib.load(str(p))  # the header only; the voxels are read below
    check_volume_shape(img.shape, img.get_data_dtype().itemsize, f"{str(p)!r} (NIfTI dim)")
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


def _check_compressed_nrrd_size(fh, encoding: str, limit: int, where: str) -> None:
    """Inflate the compressed data of ``fh`` (from its position on) in bounded steps, keeping
    nothing, and raise when it holds more than ``limit`` bytes (pynrrd inflates unbounded)."""
    import bz2
    import zlib

    step = 1 << 24
    bzip = encoding in ("bzip2", "bz2")
    inflater = bz2.BZ2Decompressor() if bzip else zlib.decompressobj(zlib.MAX_WBITS | 32)
    total = 0

    def count(out: bytes) -> None:
        nonlocal total
        total += len(out)
        if total > limit:
            raise ValueError(f"{where}: the {encoding} data inflates to more than the {limit} bytes its header "
                             f"declares")

    try:
        while not inflater.eof:
            chunk = fh.read(1 << 20)
            if not chunk:
                return
            count(inflater.decompress(chunk, step))
            if bzip:
                while not inflater.eof and not inflater.needs_input:
                    count(inflater.decompress(b"", step))
            else:
                while inflater.unconsumed_tail and not inflater.eof:
                    count(inflater.decompress(inflater.unconsumed_tail, step))
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{where}: corrupt {encoding} data: {exc}") from None


def _read_nrrd(p: Path) -> Volume:
    import nrrd

    where = repr(str(p))
    with open_regular(p, "NRRD file", max_bytes=MAX_VOLUME_BYTES + (64 << 20)) as fh:
        hdr = nrrd.read_header(fh)  # leaves fh at the data (if attached)
        data_start = fh.tell()
        try:
            from nrrd.reader import _determine_datatype

            itemsize = _determine_datatype(hdr).itemsize
        except Exception:  # noqa: BLE001 - an unknown type: pynrrd names it below
            itemsize = 1
        sizes = hdr.get("sizes")
        if sizes is None:
            raise ValueError(f"{where}: NRRD header has no 'sizes' field")
        check_volume_shape(list(np.asarray(sizes).reshape(-1)), itemsize, f"{where} (NRRD sizes)")
        n_bytes = int(np.prod(np.asarray(sizes, dtype=np.int64))) * itemsize
        data_file = hdr.get("datafile", hdr.get("data file"))
        data_path = None
        if data_file is not None:
            if str(data_file).upper().startswith("LIST") or len(str(data_file).split()) > 1:
                raise ValueError(f"{where}: multi-file NRRD data ({data_file!r}) is not supported")
            data_path = Path(data_file) if os.path.isabs(data_file) else p.parent / data_file
            check_regular_file(data_path, f"{where}: NRRD data file", max_bytes=MAX_VOLUME_BYTES + (64 << 20))
        encoding = str(hdr.get("encoding", "raw")).lower()
        if encoding in ("gzip", "gz", "bzip2", "bz2"):
            limit = n_bytes + max(int(hdr.get("byteskip", hdr.get("byte skip", 0)) or 0), 0)
            line_skip = int(hdr.get("lineskip", hdr.get("line skip", 0)) or 0)
            with (open_regular(data_path, f"{where}: NRRD data file") if data_path is not None
                  else contextlib.nullcontext(fh)) as dfh:
                for _ in range(max(line_skip, 0)):
                    dfh.readline()
                _check_compressed_nrrd_size(dfh, encoding, limit, where)
            fh.seek(data_start)
        arr = nrrd.read_data(hdr, fh, str(p), index_order="C")
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
