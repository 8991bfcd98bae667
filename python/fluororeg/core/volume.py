"""CT volumes with physical geometry: readers, writers, attenuation, pyramids.

Conventions
-----------
* Array layout: ``data`` has shape ``(nz, ny, nx)`` in C order (z-y-x); the voxel index
  ``(i, j, k)`` addresses ``data[k, j, i]``.  ``i`` runs along array axis 2, ``j`` along
  axis 1, ``k`` along axis 0.
* Physical frame: **LPS** (x toward patient Left, y toward Posterior, z toward Superior),
  millimetres, as in ITK and DICOM.  Formats whose physical frame is RAS (NIfTI, NRRD with
  ``space: right-anterior-superior``) are converted to LPS on reading and back on writing
  (x and y change sign).
* Geometry: ``X_phys = origin + direction @ (spacing * (i, j, k))``.  ``origin`` is the
  physical position of the *centre* of voxel (0, 0, 0); column ``c`` of ``direction`` is
  the physical unit vector along index axis ``c``.  ``direction`` must be orthonormal; its
  determinant may be -1 (a mirrored index frame, as for many stored images).
* Values: int16 Hounsfield units for CT, float32 linear attenuation mu (1/mm) after
  :meth:`Volume.hu_to_attenuation` (``mu = mu_water * (1 + HU / 1000)``, clipped at 0).

Formats handled by :func:`load_volume` / :func:`save_volume`: NIfTI-1 (``.nii``,
``.nii.gz``, via nibabel), NRRD (``.nrrd``, ``.nhdr``, via pynrrd), MetaImage (``.mha``,
``.mhd``, own reader/writer), a folder of single-frame DICOM files (reading only, via
pydicom) and our own ``.npz`` (arrays ``data``, ``spacing``, ``origin``, ``direction``).
NIfTI stores its geometry as float32, so geometry survives a NIfTI round trip only to
about 1e-6 relative; the other formats keep float64 geometry exactly.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["Volume", "load_volume", "save_volume", "SUPPORTED_EXTENSIONS"]

PathLike = Union[str, "os.PathLike[str]"]

#: Extensions understood by :func:`load_volume` (a folder is read as a DICOM series).
SUPPORTED_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npz")

_ORTHO_TOL = 1e-3          # largest |D^T D - I| accepted as "orthonormal"
_MIN_LEVEL_VOXELS = 8      # level_for_pixel_size never goes below this many voxels per axis
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _vec3(value: Any, name: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be 3 numbers, got {value!r}") from exc
    if arr.shape != (3,):
        raise ValueError(f"{name} must have 3 elements, got {value!r} (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return arr


def _readonly(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D image with its physical (LPS, mm) geometry; see the module docstring.

    The arrays are stored as read-only views, so a Volume never changes after creation
    (this is what makes the :meth:`level` cache safe).
    """

    data: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        data = self.data
        if not isinstance(data, np.ndarray):
            raise TypeError(f"Volume data must be a numpy.ndarray, got {type(data).__name__}")
        if data.dtype == np.bool_:
            data = data.astype(np.uint8)
        if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
            raise TypeError(f"Volume data must be an integer or float array, got dtype {data.dtype}")
        if data.ndim != 3:
            raise ValueError(
                f"Volume data must be 3-D (nz, ny, nx), got shape {data.shape} ({data.ndim}-D)")
        if data.size == 0:
            raise ValueError(f"Volume data must be non-empty, got shape {data.shape}")
        spacing = _vec3(self.spacing, "spacing")
        if np.any(spacing <= 0):
            raise ValueError(f"spacing must be positive (mm), got {spacing.tolist()}")
        origin = _vec3(self.origin, "origin")
        try:
            direction = np.array(self.direction, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"direction must be a 3x3 matrix, got {self.direction!r}") from exc
        if direction.shape != (3, 3):
            raise ValueError(f"direction must be 3x3, got shape {direction.shape}: {direction.tolist()}")
        if not np.all(np.isfinite(direction)):
            raise ValueError(f"direction must be finite, got {direction.tolist()}")
        err = np.abs(direction.T @ direction - np.eye(3)).max()
        if err > _ORTHO_TOL:
            raise ValueError(
                f"direction must be orthonormal (columns = unit index axes), got "
                f"{direction.tolist()} with max |D^T D - I| = {err:.3g} > {_ORTHO_TOL}")
        if err > 1e-12:  # remove rounding noise (float32 headers, DICOM decimal strings)
            u, _, vt = np.linalg.svd(direction)
            direction = u @ vt
        object.__setattr__(self, "data", _readonly(data))
        object.__setattr__(self, "spacing", _readonly(spacing))
        object.__setattr__(self, "origin", _readonly(origin))
        object.__setattr__(self, "direction", _readonly(direction))
        object.__setattr__(self, "_pyramid", {})

    def __repr__(self) -> str:
        return (f"Volume(shape_zyx={self.data.shape}, dtype={self.data.dtype}, "
                f"spacing={self.spacing.tolist()}, origin={self.origin.tolist()}, "
                f"direction={self.direction.round(6).tolist()})")

    # ------------------------------------------------------------------ geometry
    @property
    def shape_xyz(self) -> Tuple[int, int, int]:
        """(nx, ny, nz): number of voxels along i, j, k."""
        nz, ny, nx = self.data.shape
        return (nx, ny, nz)

    @property
    def physical_from_voxel(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k, 1) to physical LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction * self.spacing[None, :]
        m[:3, 3] = self.origin
        return m

    @property
    def voxel_from_physical(self) -> np.ndarray:
        """4x4 inverse of :attr:`physical_from_voxel` (continuous voxel indices)."""
        m = np.eye(4)
        r = self.direction.T / self.spacing[:, None]
        m[:3, :3] = r
        m[:3, 3] = -r @ self.origin
        return m

    def voxel_to_physical(self, ijk: Any) -> np.ndarray:
        """Physical positions (..., 3) of (continuous) voxel indices (..., 3) in (i, j, k) order."""
        ijk = np.asarray(ijk, dtype=np.float64)
        if ijk.shape[-1:] != (3,):
            raise ValueError(f"voxel indices must have a last axis of 3 (i, j, k), got shape {ijk.shape}")
        return self.origin + (ijk * self.spacing) @ self.direction.T

    def physical_to_voxel(self, xyz: Any) -> np.ndarray:
        """Continuous voxel indices (..., 3) in (i, j, k) order of physical points (..., 3)."""
        xyz = np.asarray(xyz, dtype=np.float64)
        if xyz.shape[-1:] != (3,):
            raise ValueError(f"physical points must have a last axis of 3 (x, y, z), got shape {xyz.shape}")
        return ((xyz - self.origin) @ self.direction) / self.spacing

    @property
    def corners(self) -> np.ndarray:
        """(8, 3) physical positions of the 8 corner voxel centres (i fastest)."""
        nx, ny, nz = self.shape_xyz
        idx = np.array([[i, j, k] for k in (0, nz - 1) for j in (0, ny - 1) for i in (0, nx - 1)],
                       dtype=np.float64)
        return self.voxel_to_physical(idx)

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3): physical axis-aligned [min, max] of the voxel-centre box."""
        c = self.corners
        return np.stack([c.min(axis=0), c.max(axis=0)])

    @property
    def center(self) -> np.ndarray:
        """(3,) physical position of the centre of the voxel-centre box."""
        nx, ny, nz = self.shape_xyz
        return self.voxel_to_physical([(nx - 1) / 2.0, (ny - 1) / 2.0, (nz - 1) / 2.0])

    # ------------------------------------------------------------------ derived volumes
    def _replace(self, data: Optional[np.ndarray] = None, spacing: Any = None,
                 origin: Any = None) -> "Volume":
        return Volume(self.data if data is None else data,
                      self.spacing if spacing is None else spacing,
                      self.origin if origin is None else origin,
                      self.direction)

    def hu_to_attenuation(self, mu_water_per_mm: float = 0.02,
                          air_hu: Optional[float] = -900.0) -> "Volume":
        """Linear attenuation ``mu = mu_water * (1 + HU / 1000)`` clipped at 0, float32 (1/mm).

        The data are taken to be Hounsfield units. Voxels below ``air_hu`` (default -900 HU)
        are set to exactly 0: CT noise in air (about -1000 +- 20 HU) would otherwise add a
        faint fog to every DRR and defeat the renderers' empty-space skipping. ``None``
        keeps the plain formula.
        """
        mu_w = float(mu_water_per_mm)
        if not math.isfinite(mu_w) or mu_w <= 0:
            raise ValueError(f"mu_water_per_mm must be a positive finite number (1/mm), got {mu_water_per_mm!r}")
        if air_hu is not None and not math.isfinite(float(air_hu)):
            raise ValueError(f"air_hu must be a finite HU value or None, got {air_hu!r}")
        mu = self.data.astype(np.float32) * np.float32(mu_w / 1000.0) + np.float32(mu_w)
        np.maximum(mu, 0.0, out=mu)
        if air_hu is not None:
            mu[self.data < air_hu] = 0.0
        return self._replace(data=mu)

    def translated(self, offset_mm: Any) -> "Volume":
        """The same image with its origin shifted by ``offset_mm`` (physical, mm)."""
        return self._replace(origin=self.origin + _vec3(offset_mm, "offset_mm"))

    def downsampled(self, factor: Union[int, Sequence[int]]) -> "Volume":
        """Anti-aliased downsampling by integer factors: mean over blocks, float32.

        ``factor`` is one integer for all axes or ``(fx, fy, fz)`` along (i, j, k). Each
        axis gets ``ceil(n / f)`` voxels; a partial block at the far end of an axis is
        completed with the background value (the volume's minimum, i.e. air), so every
        coarse voxel centre stays on the regular coarse grid and the total attenuation is
        preserved.  Spacing is multiplied by the factors and
        the origin moves to the centre of the first block, so physical positions are
        preserved.
        """
        if isinstance(factor, (int, np.integer)) and not isinstance(factor, (bool, np.bool_)):
            factors = (int(factor),) * 3
        else:
            try:
                factors = tuple(factor)  # type: ignore[arg-type]
            except TypeError:
                raise TypeError(f"factor must be an integer >= 1 or three of them, got {factor!r}") from None
            if len(factors) != 3 or any(
                    isinstance(f, (bool, np.bool_)) or not isinstance(f, (int, np.integer)) for f in factors):
                raise TypeError(f"factor must be an integer >= 1 or three of them, got {factor!r}")
            factors = tuple(int(f) for f in factors)
        if min(factors) < 1:
            raise ValueError(f"factor must be an integer >= 1 or three of them, got {factor!r}")
        fx, fy, fz = factors
        if factors == (1, 1, 1):
            return self._replace(data=np.array(self.data, dtype=np.float32))
        nz, ny, nx = self.data.shape
        cz, cy, cx = -(-nz // fz), -(-ny // fy), -(-nx // fx)
        # Partial blocks at the far ends are completed with the background (the volume's
        # minimum: air), so that the total of attenuation volumes, and with it every line
        # integral through them, is preserved.
        background = float(self.data.min())
        out = np.empty((cz, cy, cx), dtype=np.float32)
        chunk = max(1, (1 << 22) // max(1, cy * cx * fx * fy * fz))  # coarse slices per pass
        for z0 in range(0, cz, chunk):
            z1 = min(cz, z0 + chunk)
            block = np.full(((z1 - z0) * fz, cy * fy, cx * fx), background, dtype=np.float64)
            src = self.data[z0 * fz:z1 * fz]
            block[:src.shape[0], :ny, :nx] = src
            block = block.reshape(z1 - z0, fz, cy, fy, cx, fx)
            out[z0:z1] = block.mean(axis=(1, 3, 5))
        f = np.array(factors, dtype=np.float64)
        shift = self.direction @ (self.spacing * (f - 1) / 2.0)
        return self._replace(data=out, spacing=self.spacing * f, origin=self.origin + shift)

    def factors_for_pixel_size(self, pixel_mm: float) -> Tuple[int, int, int]:
        """Per-axis power-of-two factors (fx, fy, fz): the largest with ``spacing * f <=
        pixel_mm`` along each axis, never leaving fewer than 8 voxels along an axis."""
        p = float(pixel_mm)
        if not math.isfinite(p) or p <= 0:
            raise ValueError(f"pixel_mm must be a positive finite number (mm), got {pixel_mm!r}")
        factors = []
        for n, sp in zip(self.shape_xyz, self.spacing):
            f = 1
            while sp * f * 2 <= p * (1 + 1e-9) and -(-n // (f * 2)) >= _MIN_LEVEL_VOXELS:
                f *= 2
            factors.append(f)
        return tuple(factors)  # type: ignore[return-value]

    def for_pixel_size(self, pixel_mm: float) -> "Volume":
        """The volume downsampled (per axis, anti-aliased, cached) to match a pixel size in
        mm at the object, as the renderers use it; ``self`` when no axis is finer."""
        factors = self.factors_for_pixel_size(pixel_mm)
        if factors == (1, 1, 1):
            return self
        cache: Dict[Any, Volume] = self._pyramid  # type: ignore[attr-defined]
        key = ("factors",) + factors
        if key not in cache:
            cache[key] = self.downsampled(factors)
        return cache[key]

    def level(self, level: int) -> "Volume":
        """Pyramid level: 0 is ``self``; level L is ``self.downsampled(2 ** L)`` (cached)."""
        if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, np.integer)):
            raise TypeError(f"level must be an integer >= 0, got {level!r}")
        lv = int(level)
        if lv < 0:
            raise ValueError(f"level must be an integer >= 0, got {level!r}")
        if lv == 0:
            return self
        if 2 ** lv > 2 * max(self.data.shape):
            raise ValueError(f"level {lv} is too coarse for a volume of shape {self.data.shape}")
        cache: Dict[int, Volume] = self._pyramid  # type: ignore[attr-defined]
        if lv not in cache:
            cache[lv] = self.downsampled(2 ** lv)
        return cache[lv]

    def level_for_pixel_size(self, pixel_mm: float) -> int:
        """Largest level L whose largest spacing is <= ``pixel_mm``.

        Returns 0 when even level 0 is coarser than ``pixel_mm``; never picks a level
        with fewer than 8 voxels along any axis.
        """
        p = float(pixel_mm)
        if not math.isfinite(p) or p <= 0:
            raise ValueError(f"pixel_mm must be a positive finite number (mm), got {pixel_mm!r}")
        shape = np.array(self.data.shape)
        best = 0
        lv = 1
        while True:
            f = 2 ** lv
            if np.any(-(-shape // f) < _MIN_LEVEL_VOXELS):
                break
            if float(self.spacing.max()) * f > p:
                break
            best = lv
            lv += 1
        return best

    def mask(self, threshold_hu: float, largest_component: bool = True) -> "Volume":
        """uint8 mask of ``data >= threshold_hu``, optionally only its largest 26-connected component."""
        t = float(threshold_hu)
        if not math.isfinite(t):
            raise ValueError(f"threshold_hu must be finite, got {threshold_hu!r}")
        m = self.data >= t
        if not m.any():
            raise ValueError(
                f"no voxel reaches threshold_hu={threshold_hu!r} (data range "
                f"{self.data.min()}..{self.data.max()})")
        if largest_component:
            from scipy import ndimage

            labels, n = ndimage.label(m, structure=np.ones((3, 3, 3), dtype=bool))
            if n > 1:
                counts = np.bincount(labels.ravel())
                counts[0] = 0
                m = labels == int(np.argmax(counts))
        return self._replace(data=m.astype(np.uint8))


# ====================================================================== I/O helpers
def _kind(path: Path) -> str:
    name = path.name.lower()
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npz"):
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


def load_volume(path: PathLike) -> Volume:
    """Read a volume; the format is chosen by extension, a folder is read as a DICOM series.

    A single ``.dcm`` file selects the series it belongs to within its folder.
    """
    p = Path(path)
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
    if err > _ORTHO_TOL:
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
