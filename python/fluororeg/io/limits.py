"""Bounds on what fluororeg reads, and the one way readers open an input path.

Every reader checks a path with :func:`check_regular_file` (or reads it with
:func:`read_bytes` / :func:`read_text`) *before* opening it: device files (``/dev/zero``,
``/dev/urandom``), FIFOs, sockets and folders are refused with a ValueError naming the path
and what it is, so that no reader blocks on a FIFO or reads a device forever. Sizes declared
by a file's header (voxels, pixels, frames, frame numbers, polynomial orders) are checked
against the limits below *before* anything of that size is allocated or inflated; the
errors name the file, the value and the limit. The limits are far above real data (a
whole-body CT at 0.5 mm, a 4k x 4k detector, an hour at 1000 frames/s) and well below what
exhausts a workstation.
"""

from __future__ import annotations

import io
import os
import stat
from contextlib import contextmanager
from pathlib import Path

__all__ = ["MAX_VOLUME_VOXELS", "MAX_VOLUME_BYTES", "MAX_FRAME_PIXELS", "MAX_FRAMES", "MAX_FRAME_NUMBER",
           "MAX_POLYNOMIAL_ORDER", "MAX_TEXT_FILE_BYTES", "MAX_IMAGE_FILE_BYTES", "check_regular_file",
           "open_regular", "BoundedReader", "READ_SLACK_BYTES", "read_bytes", "read_text", "check_volume_shape",
           "check_frame_shape", "check_frame_count", "check_frame_numbers", "describe_file_type", "npz_member_header",
           "open_npz"]

#: Voxels of one CT volume (2^29 = 536,870,912: e.g. 512 x 512 x 2048).
MAX_VOLUME_VOXELS = 1 << 29
#: Bytes of one volume's stored voxel data (2 GiB: the limit above at 4 bytes per voxel).
MAX_VOLUME_BYTES = 1 << 31
#: Pixels of one X-ray frame or calibration image (8192 x 8192 = 67,108,864).
MAX_FRAME_PIXELS = 8192 * 8192
#: Frames of one image sequence (a million: over 16 min at 1000 frames/s).
MAX_FRAMES = 1_000_000
#: Frame numbers lie in 0 <= number < MAX_FRAME_NUMBER.
MAX_FRAME_NUMBER = 10_000_000
#: Highest order of a distortion polynomial (the paper uses 5).
MAX_POLYNOMIAL_ORDER = 10
#: Bytes of a text input (JSON, CSV, .cfg, .tra, landmark files).
MAX_TEXT_FILE_BYTES = 256 << 20
#: Bytes of one image file (a frame, a slice or a page; compressed or not).
MAX_IMAGE_FILE_BYTES = 1 << 30


def describe_file_type(mode: int) -> str:
    """What a ``st_mode`` is, in words (for the errors)."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a regular file"


def _size_text(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n} bytes"


def check_regular_file(path, what: str = "input file", *, max_bytes: int | None = None,
                       missing_error: type = FileNotFoundError) -> os.stat_result:
    """The ``os.stat`` of ``path`` (links followed) after checking that it is a regular file
    no larger than ``max_bytes``; nothing is opened. Raises ``missing_error`` (default
    FileNotFoundError) when it does not exist, ValueError when it is a folder, a device, a
    FIFO or a socket, or too large."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise missing_error(f"{what} '{p}' does not exist") from None
    except OSError as exc:
        raise ValueError(f"{what} '{p}' cannot be examined: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} '{p}' is {describe_file_type(st.st_mode)}, expected a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise ValueError(f"{what} '{p}' is {_size_text(st.st_size)}, more than the {_size_text(max_bytes)} "
                         f"such a file may have")
    return st


#: Bytes beyond the end of a file that one read may still ask for (BoundedReader).
READ_SLACK_BYTES = 1 << 16


class BoundedReader(io.BufferedReader):
    """A regular file's buffered reader whose ``read(n)`` and ``read1(n)`` ask for no more than the
    bytes left in the file (plus :data:`READ_SLACK_BYTES`). Both allocate n bytes before they
    read, so a decoder that trusts a damaged length field (a PNG chunk declared 2 GiB long, read by
    Pillow whole) would otherwise raise MemoryError on a file of a few kilobytes. What is read is
    the same: a read never returns more than the file holds."""

    def _bounded(self, size):
        if size is not None and size > READ_SLACK_BYTES:
            left = os.fstat(self.fileno()).st_size - self.tell()
            size = min(size, max(left, 0) + READ_SLACK_BYTES)
        return size

    def read(self, size=-1):
        return super().read(self._bounded(size))

    def read1(self, size=-1):
        return super().read1(self._bounded(size))


def open_regular(path, what: str = "input file", *, max_bytes: int | None = None) -> BoundedReader:
    """A binary file object of ``path`` (:class:`BoundedReader`), checked to be a regular file both
    before opening and on the open descriptor (O_NONBLOCK: a FIFO swapped in between does not block
    the open)."""
    check_regular_file(path, what, max_bytes=max_bytes)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what} '{path}' is {describe_file_type(st.st_mode)}, expected a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ValueError(f"{what} '{path}' is {_size_text(st.st_size)}, more than the {_size_text(max_bytes)} "
                             f"such a file may have")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        raw = io.FileIO(fd, "r", closefd=True)
    except BaseException:
        os.close(fd)
        raise
    return BoundedReader(raw)


def read_bytes(path, what: str = "input file", *, max_bytes: int = MAX_VOLUME_BYTES + (64 << 20)) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``; see :func:`check_regular_file`)."""
    with open_regular(path, what, max_bytes=max_bytes) as fh:
        # read(n) allocates n bytes up front: ask for the file's size (+1 to notice growth), not the limit
        size = min(os.fstat(fh.fileno()).st_size, max_bytes)
        chunks = [fh.read(size + 1)]
        total = len(chunks[0])
        while total > size and total <= max_bytes:  # it grew since: read on, in bounded steps
            chunk = fh.read(min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        data = b"".join(chunks)
    if len(data) > max_bytes:  # grew since the check
        raise ValueError(f"{what} '{path}' is more than the {_size_text(max_bytes)} such a file may have")
    return data


def read_text(path, what: str = "input file", *, max_bytes: int = MAX_TEXT_FILE_BYTES,
              encoding: str = "utf-8", errors: str = "strict") -> str:
    """The text of the regular file ``path`` (at most ``max_bytes``), decoded with universal
    newlines like ``Path.read_text``. Undecodable bytes raise ValueError naming the file."""
    data = read_bytes(path, what, max_bytes=max_bytes)
    try:
        text = data.decode(encoding, errors)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} '{path}' is not {encoding} text: {exc}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


@contextmanager
def open_npz(path, what: str):
    """``numpy.load(path)`` of an .npz archive (no pickles) as a context manager, every way a file
    can fail to be one (empty, truncated, a text or .npy file, a damaged member read inside the
    block) turned into one ``ValueError`` naming the file and ``what`` it was meant to be."""
    import zipfile
    import zlib

    import numpy as np

    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        # numpy reads a file that is neither zip nor .npy as a pickle, and refuses it as one
        why = "neither a zip archive nor an .npy array" if "pickled" in str(exc) else " ".join(str(exc).split())[:120]
        raise ValueError(f"'{path}' is not a readable .npz archive ({what}): {why}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"'{path}' holds a single .npy array, expected an .npz archive ({what})")
    with archive:
        try:
            yield archive
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ValueError(f"'{path}' is a damaged .npz archive ({what}): {exc}") from None


def npz_member_header(npz, name: str) -> tuple:
    """(shape, dtype) of array ``name`` of an open ``numpy.lib.npyio.NpzFile``, from its .npy
    header only (nothing inflated), so that sizes can be checked before the array is read."""
    import numpy as np

    with npz.zip.open(name + ".npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    return tuple(int(s) for s in shape), dtype


def _product(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def check_volume_shape(shape, itemsize: int, where: str) -> None:
    """Raise ValueError when a volume of ``shape`` (any order) and ``itemsize`` bytes per voxel
    exceeds :data:`MAX_VOLUME_VOXELS` or :data:`MAX_VOLUME_BYTES`, or has a size < 1."""
    dims = [int(s) for s in shape]
    if any(s < 1 for s in dims):
        raise ValueError(f"{where}: volume size {dims}: every size must be at least 1")
    n = _product(dims)
    if n > MAX_VOLUME_VOXELS:
        raise ValueError(f"{where}: volume size {dims} is {n:,} voxels, more than the limit of "
                         f"{MAX_VOLUME_VOXELS:,} (fluororeg.io.limits.MAX_VOLUME_VOXELS)")
    if n * int(itemsize) > MAX_VOLUME_BYTES:
        raise ValueError(f"{where}: volume size {dims} at {itemsize} bytes per voxel is "
                         f"{_size_text(n * int(itemsize))}, more than the limit of {_size_text(MAX_VOLUME_BYTES)}")


def check_frame_shape(width: int, height: int, where: str) -> None:
    """Raise ValueError when an image of ``width`` x ``height`` px is empty or exceeds
    :data:`MAX_FRAME_PIXELS`."""
    w, h = int(width), int(height)
    if w < 1 or h < 1:
        raise ValueError(f"{where}: image size {w} x {h} px: expected at least 1 x 1")
    if w * h > MAX_FRAME_PIXELS:
        raise ValueError(f"{where}: image size {w} x {h} px is {w * h:,} pixels, more than the limit of "
                         f"{MAX_FRAME_PIXELS:,} (fluororeg.io.limits.MAX_FRAME_PIXELS)")


def check_frame_count(n: int, where: str) -> None:
    """Raise ValueError when ``n`` frames exceed :data:`MAX_FRAMES`."""
    if int(n) > MAX_FRAMES:
        raise ValueError(f"{where}: {int(n):,} frames, more than the limit of {MAX_FRAMES:,} "
                         f"(fluororeg.io.limits.MAX_FRAMES)")


def check_frame_numbers(numbers, where: str) -> None:
    """Raise ValueError unless every frame number lies in 0 <= n < :data:`MAX_FRAME_NUMBER`."""
    import numpy as np

    a = np.asarray(numbers).reshape(-1)
    if not len(a):
        return
    lo, hi = int(a.min()), int(a.max())
    if lo < 0:
        raise ValueError(f"{where}: frame {lo} is negative")
    if hi >= MAX_FRAME_NUMBER:
        raise ValueError(f"{where}: frame {hi} is beyond the limit: frame numbers must be below "
                         f"{MAX_FRAME_NUMBER:,} (fluororeg.io.limits.MAX_FRAME_NUMBER)")
