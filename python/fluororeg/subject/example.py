"""Example data: the shared test CT (headsq) and the fetchable InVesalius "Cranium" CT.

``headsq_path()`` finds ``shared/data/headsq/headsq_hu.nii.gz`` (only present on
development and CI machines); ``cranium_volume()`` downloads Debian's
``invesalius-examples`` package once and converts its "Cranium" CT (ProMED CT 0051,
GPL-2) to a cached ``cranium_hu.npz``.

Orientation of Cranium
----------------------
InVesalius project files (``.inv3``) store no patient orientation, only the voxel array
``matrix.dat`` (int16 HU, C order z-y-x, shape (108, 256, 256)) and its spacing.  The
volume returned here is placed in LPS as follows:

* k (slices, array axis 0): slice 0 is the most inferior, so k points Superior:
  direction column (0, 0, 1).  (Checked on the data: the maxilla and nasal cavity are
  in the low slices, the vault in the high ones.)
* j (rows, array axis 1): the row index grows toward Anterior (the nose is at high row
  indices): direction column (0, -1, 0).  InVesalius flips the rows of the DICOM slices
  on import (row 0 of a standard axial DICOM slice is anterior).
* i (columns, array axis 2): **assumed** to grow toward the patient's Left: direction
  column (1, 0, 0).  This is the standard axial DICOM layout (ImageOrientationPatient
  1\\0\\0\\0\\1\\0, head first supine) and InVesalius's import flips only the rows, not the
  columns.  The data cannot confirm it (a head is nearly left-right symmetric and no
  marker is visible), so left/right is the one ambiguous axis: if it were wrong the model
  would be a mirror image of the real subject.
* Hence ``direction = [[1, 0, 0], [0, -1, 0], [0, 0, 1]]`` (determinant -1: the index
  frame is left-handed because of the row flip; the physical LPS frame is right-handed).
* The origin is chosen so that the centre of the voxel-centre box is at (0, 0, 0) mm
  (the original scanner position is not stored).
"""

from __future__ import annotations

import io
import os
import plistlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from fluororeg.core.volume import Volume
from fluororeg.io.volume_formats import load_volume, save_volume

__all__ = ["shared_data_dir", "headsq_path", "default_cache_dir", "cranium_volume",
           "CRANIUM_DEB_PACKAGE", "CRANIUM_SHAPE_ZYX", "CRANIUM_DIRECTION"]

CRANIUM_DEB_PACKAGE = "invesalius-examples"
CRANIUM_SHAPE_ZYX = (108, 256, 256)
CRANIUM_DIRECTION = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
_CRANIUM_NPZ = "cranium_hu.npz"
_CRANIUM_MEMBER = "Cranium.inv3"

PathLike = Union[str, "os.PathLike[str]"]


def _log(msg: str) -> None:
    print(f"fluororeg: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- shared data
def _ancestors(start: Path) -> Iterable[Path]:
    start = start.resolve()
    yield start
    yield from start.parents


def shared_data_dir() -> Optional[Path]:
    """The project's ``shared/data`` folder, or None.

    ``$FLUORO_SHARED_DATA`` (the ``data`` folder itself, or a folder holding ``data``)
    wins; otherwise ``shared/data`` is searched for in every ancestor of this file and of
    the current directory (it lies at ``../shared/data`` from the repository root).
    """
    env = os.environ.get("FLUORO_SHARED_DATA")
    if env:
        p = Path(env).expanduser()
        for cand in (p, p / "data"):
            if (cand / "headsq").is_dir() or (cand / "README.md").is_file():
                return cand
        return p if p.is_dir() else None
    for start in (Path(__file__).parent, Path.cwd()):
        for anc in _ancestors(start):
            cand = anc / "shared" / "data"
            if cand.is_dir():
                return cand
    return None


def headsq_path() -> Optional[Path]:
    """Path of ``shared/data/headsq/headsq_hu.nii.gz`` (tests only), or None if absent."""
    d = shared_data_dir()
    if d is None:
        return None
    p = d / "headsq" / "headsq_hu.nii.gz"
    return p if p.is_file() else None


# ---------------------------------------------------------------------- Cranium
def default_cache_dir() -> Path:
    """``$FLUORO_CACHE`` or ``~/.cache/fluororeg``."""
    env = os.environ.get("FLUORO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fluororeg"


def _clean_stale_temps(cache: Path, max_age_s: float = 3600.0) -> None:
    now = time.time()
    for p in cache.glob(".tmp-cranium-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
        except OSError:
            pass


def _find_deb(cache: Path) -> Optional[Path]:
    debs = sorted(cache.glob(f"{CRANIUM_DEB_PACKAGE}_*.deb"))
    return debs[-1] if debs else None


def _download_deb(cache: Path) -> Path:
    apt = shutil.which("apt-get")
    hint = (f"get the Debian/Ubuntu package '{CRANIUM_DEB_PACKAGE}' by hand "
            f"(e.g. `apt-get download {CRANIUM_DEB_PACKAGE}` on a Debian/Ubuntu machine) and "
            f"put its .deb file into {str(cache)!r}")
    if apt is None:
        raise RuntimeError(f"apt-get is not available to download the example CT; {hint}")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-cranium-dl-", dir=cache))
    try:
        _log(f"downloading Debian package {CRANIUM_DEB_PACKAGE} (~19 MB) with apt-get into {cache}")
        res = subprocess.run([apt, "download", CRANIUM_DEB_PACKAGE], cwd=tmp,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        debs = sorted(tmp.glob(f"{CRANIUM_DEB_PACKAGE}_*.deb"))
        if res.returncode != 0 or not debs:
            msg = (res.stderr or res.stdout or "").strip().splitlines()
            raise RuntimeError(
                f"`apt-get download {CRANIUM_DEB_PACKAGE}` failed (exit {res.returncode}: "
                f"{msg[-1] if msg else 'no output'}); {hint}")
        target = cache / debs[-1].name
        os.replace(debs[-1], target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ar_members(deb: Path):
    """(name, bytes) of the members of a Debian ``ar`` archive."""
    with open(deb, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise ValueError(f"{str(deb)!r} is not a Debian package (no ar header)")
        while True:
            hdr = fh.read(60)
            if len(hdr) < 60:
                return
            name = hdr[:16].decode("ascii").strip().rstrip("/")
            size = int(hdr[48:58].decode("ascii").strip())
            data = fh.read(size)
            if size % 2:
                fh.read(1)
            yield name, data


def _inv3_from_deb(deb: Path) -> bytes:
    """The bytes of ``Cranium.inv3`` inside the .deb (pure Python; dpkg-deb as fallback)."""
    for name, data in _ar_members(deb):
        if not name.startswith("data.tar"):
            continue
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                for m in tar:
                    if m.isfile() and Path(m.name).name == _CRANIUM_MEMBER:
                        return tar.extractfile(m).read()  # type: ignore[union-attr]
        except tarfile.CompressionError:
            break  # e.g. zstd: let dpkg-deb do it
        raise ValueError(f"{str(deb)!r} contains no {_CRANIUM_MEMBER}")
    dpkg = shutil.which("dpkg-deb") or shutil.which("dpkg")
    if dpkg is None:
        raise RuntimeError(f"cannot unpack {str(deb)!r}: unsupported compression and no dpkg; "
                           f"extract {_CRANIUM_MEMBER} by hand")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-cranium-x-", dir=deb.parent))
    try:
        subprocess.run([dpkg, "-x", str(deb), str(tmp)], check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        hits = list(tmp.rglob(_CRANIUM_MEMBER))
        if not hits:
            raise ValueError(f"{str(deb)!r} contains no {_CRANIUM_MEMBER}")
        return hits[0].read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _volume_from_inv3(inv3: bytes, source: str) -> Volume:
    plist = matrix = None
    with tarfile.open(fileobj=io.BytesIO(inv3), mode="r:*") as tar:
        members = {Path(m.name).name: m for m in tar if m.isfile()}
        if "main.plist" not in members:
            raise ValueError(f"{source}: no main.plist in {_CRANIUM_MEMBER}")
        plist = plistlib.loads(tar.extractfile(members["main.plist"]).read())  # type: ignore[union-attr]
        mat = plist.get("matrix", {})
        fname = mat.get("filename", "matrix.dat")
        if fname not in members:
            raise ValueError(f"{source}: no {fname} in {_CRANIUM_MEMBER}")
        matrix = tar.extractfile(members[fname]).read()  # type: ignore[union-attr]
    shape = tuple(int(s) for s in mat.get("shape", ()))
    dtype = np.dtype(mat.get("dtype", "int16")).newbyteorder("<")
    if len(shape) != 3 or int(np.prod(shape)) * dtype.itemsize != len(matrix):
        raise ValueError(f"{source}: matrix.dat has {len(matrix)} bytes, which does not match "
                         f"shape {shape} of {dtype}")
    data = np.frombuffer(matrix, dtype=dtype).reshape(shape).astype(np.int16)
    lo, hi = int(data.min()), int(data.max())
    if lo >= -50 and hi > 2000:  # stored with a +1024 offset
        data = (data.astype(np.int32) - 1024).astype(np.int16)
        lo, hi = lo - 1024, hi - 1024
    if not (-1100 <= lo <= -900 and hi > 1000):
        raise ValueError(f"{source}: values {lo}..{hi} do not look like Hounsfield units "
                         f"(expected air near -1000 and bone above 1000)")
    spacing = np.array([float(s) for s in plist["spacing"]])  # (x, y, z) = (i, j, k)
    vol = Volume(data, spacing, np.zeros(3), CRANIUM_DIRECTION)
    return vol.translated(-vol.center)


def cranium_volume(cache_dir: Optional[PathLike] = None) -> Volume:
    """The example subject's CT (InVesalius "Cranium"), int16 HU, LPS (see module docstring).

    The first call downloads Debian's ``invesalius-examples`` (~19 MB) with
    ``apt-get download`` into the cache folder (``cache_dir``, else ``$FLUORO_CACHE``, else
    ``~/.cache/fluororeg``), extracts ``Cranium.inv3`` and caches the converted volume as
    ``cranium_hu.npz``; later calls only read that file.  Every step writes to a
    temporary name and renames, so an interrupted run leaves nothing half-written.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    npz = cache / _CRANIUM_NPZ
    if npz.is_file():
        vol = load_volume(npz)
        if vol.data.shape != CRANIUM_SHAPE_ZYX:
            raise ValueError(f"cached {str(npz)!r} has shape {vol.data.shape}, expected "
                             f"{CRANIUM_SHAPE_ZYX}; delete it to rebuild")
        return vol
    cache.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(cache)
    deb = _find_deb(cache)
    if deb is None:
        deb = _download_deb(cache)
    else:
        _log(f"using cached package {deb}")
    _log(f"extracting {_CRANIUM_MEMBER} from {deb.name}")
    try:
        inv3 = _inv3_from_deb(deb)
    except (ValueError, tarfile.TarError, EOFError) as exc:
        raise ValueError(f"cannot read {str(deb)!r} ({exc}); delete it and call again to "
                         f"download it anew") from exc
    _log("reading main.plist and matrix.dat")
    vol = _volume_from_inv3(inv3, f"{deb.name}:{_CRANIUM_MEMBER}")
    _log(f"writing {npz}")
    save_volume(vol, npz)  # temporary file + rename
    return vol
