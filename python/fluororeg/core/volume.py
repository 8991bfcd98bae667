"""CT volumes with physical geometry: the Volume class, attenuation, pyramids.

Reading and writing files: :mod:`fluororeg.io.volume_formats`.

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

"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from fluororeg import _core

MAX_VOLUME_VOXELS: int = _core.MAX_VOLUME_VOXELS  # the C++ core's bound (fluororeg/limits.h)

__all__ = ["Volume"]

PathLike = Union[str, "os.PathLike[str]"]

ORTHO_TOL = 1e-3          # largest |D^T D - I| accepted as "orthonormal"
_MIN_LEVEL_VOXELS = 8      # level_for_pixel_size never goes below this many voxels per axis


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
        if data.size > MAX_VOLUME_VOXELS:  # before any copy (a huge zero-stride view costs nothing until copied)
            raise ValueError(f"Volume data has shape {data.shape} ({data.size:,} voxels): expected at most "
                             f"{MAX_VOLUME_VOXELS:,} voxels")
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
        if err > ORTHO_TOL:
            raise ValueError(
                f"direction must be orthonormal (columns = unit index axes), got "
                f"{direction.tolist()} with max |D^T D - I| = {err:.3g} > {ORTHO_TOL}")
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
        pixel_mm`` along each axis, never leaving fewer than 8 voxels along an axis. The answer
        is remembered per pixel size (every renderer call asks)."""
        p = float(pixel_mm)
        if not math.isfinite(p) or p <= 0:
            raise ValueError(f"pixel_mm must be a positive finite number (mm), got {pixel_mm!r}")
        cache: Dict[Any, Any] = self._pyramid  # type: ignore[attr-defined]
        key = ("factors_for", p)
        if key in cache:
            return cache[key]
        factors = tuple(int(f) for f in self.factors_for_pixel_sizes([p])[0])
        cache[key] = factors
        return factors

    def factors_for_pixel_sizes(self, pixel_mm) -> np.ndarray:
        """:meth:`factors_for_pixel_size` of each of ``pixel_mm`` [n] (mm) at once: [n, 3] int
        (fx, fy, fz), not remembered (the per-image sizes of a batch)."""
        p = np.asarray(pixel_mm, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(p) & (p > 0)):
            bad = p[~(np.isfinite(p) & (p > 0))][0]
            raise ValueError(f"pixel_mm must be positive finite numbers (mm), got {bad!r}")
        factors = np.ones((len(p), 3), dtype=np.int64)
        for axis, (n, sp) in enumerate(zip(self.shape_xyz, self.spacing)):
            f = factors[:, axis]
            while True:  # double while the pixel allows and enough voxels remain
                grow = (sp * f * 2 <= p * (1 + 1e-9)) & (-(-n // (f * 2)) >= _MIN_LEVEL_VOXELS)
                if not grow.any():
                    break
                f[grow] *= 2
        return factors

    def for_pixel_size(self, pixel_mm: float) -> "Volume":
        """The volume downsampled (per axis, anti-aliased, cached) to match a pixel size in
        mm at the object, as the renderers use it; ``self`` when no axis is finer."""
        cache: Dict[Any, Any] = self._pyramid  # type: ignore[attr-defined]
        # Every renderer call asks: the remembered factors first, without the checks.
        factors = cache.get(("factors_for", pixel_mm)) or self.factors_for_pixel_size(pixel_mm)
        if factors == (1, 1, 1):
            return self
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
