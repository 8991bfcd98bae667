"""Dual-fluoroscope recordings on disk: two image sequences plus a geometry file.

A recording folder holds ``recording.json``::

    {"format": "fluororeg-recording", "version": 1,
     "views": ["view1", "view2"],          # one image sequence per fluoroscope (view 1, view 2)
     "geometry": "geometry.json",          # fluororeg.calibration geometry file (both views,
                                           # optionally each view's distortion model)
     "frames": 120,                        # optional; checked when given
     "frame_numbers": [2, 99, 158],        # optional; checked when given
     "frame_rate_hz": 100}                 # optional: the acquisition rate (for smoothing)

Each entry of ``views`` is a folder of images (PNG or TIFF, one frame each, in the order of their
names with numbers compared as numbers: ``f_2`` before ``f_10``), a
multi-page TIFF file, or a video file (AVI, MP4, MOV, MKV; decoded by FFmpeg through PyAV),
relative to the recording folder. Real recordings use the same layout; :func:`open_recording`
can also be given the two sequences and the geometry directly. Frames are read lazily, one at a
time, as float32 grey levels. Videos decode forward: reading frames in order costs one decode
each, going back restarts from the first frame (the pipeline reads in order). Lossy codecs
alter grey levels; labs that keep video should prefer lossless ones (FFV1, uncompressed AVI).

Frame numbers (``Recording.frame_numbers``) are the lab's own: for a folder of images, the
last number in each file name (``xr_cam01_UND.0099.tif`` is frame 99) when every file has
one and no two share it (the files are then ordered by it), else the position 0, 1, 2 ...;
for a Phantom ``.cine`` the camera's image numbers (its header's first image number on);
for other videos and multi-page TIFFs the position. The two views are paired by frame
number: views whose numbers differ are an error that names the frames only one view has.
Results (poses.csv, .tra exports) keep these numbers. :func:`init_recording` writes
recording.json for a lab's own image folders or videos.

The frame rate (``Recording.frame_rate_hz``, used by the pipeline's temporal smoothing) comes
from ``frame_rate_hz`` in recording.json, else from the videos' own rate when both views are
videos of the same rate, else it is unknown (None).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fluororeg.io.atomic import atomic_write_text
from fluororeg.io.limits import (MAX_FRAME_PIXELS, MAX_FRAMES, MAX_IMAGE_FILE_BYTES, check_frame_count,
                                 check_frame_numbers, check_frame_shape, check_regular_file, open_regular, read_text)

MANIFEST_VERSION = 1  # recording.json's "version"
MAX_FRAME_RATE_HZ = 1e6  # the fastest high-speed cameras record about 10^5 frames/s

__all__ = ["ImageSequence", "Recording", "open_recording", "write_recording_manifest", "init_recording",
           "frame_number_of"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".cine")


def frame_number_of(path) -> int | None:
    """The frame number in an image file's name: the last run of digits of its stem
    (``L_Hop_Cam1_001_UND.0260.tif`` -> 260), or None."""
    runs = re.findall(r"\d+", Path(path).stem)
    if runs and len(runs[-1].lstrip("0")) > 18:  # beyond int64: never a frame number (the bound is checked later)
        raise ValueError(f"'{path}': frame number {runs[-1]} in the file name is out of range")
    return int(runs[-1]) if runs else None


def _cine_first_image_number(path: Path) -> tuple[int, int]:
    """(first image number, image count) from a Phantom .cine CINEFILEHEADER (little endian:
    'CI', header size, compression, version, FirstMovieImage int32, TotalImageCount uint32,
    FirstImageNo int32, ImageCount uint32)."""
    import struct

    with open_regular(path, "Phantom .cine file") as fh:
        head = fh.read(24)
    if len(head) < 24 or head[:2] != b"CI":
        raise ValueError(f"'{path}' is not a Phantom .cine file (no 'CI' header)")
    first_no, count = struct.unpack_from("<iI", head, 16)
    return int(first_no), int(count)


class _VideoReader:
    """Grey frames of a video file by index, decoded forward (see the module docstring)."""

    def __init__(self, path: Path):
        try:
            import av
        except ImportError as exc:  # pragma: no cover - av is a dependency
            raise ImportError("reading video needs PyAV: pip install av") from exc
        self.path = path
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise ValueError(f"'{path}' holds no video stream")
                stream = container.streams.video[0]
                codec = stream.codec_context
                if codec is None:  # a damaged header names no codec FFmpeg knows
                    raise ValueError(f"cannot read the video '{path}': FFmpeg finds no decoder for its video "
                                     "stream (a damaged file, or a codec this build lacks)")
                check_frame_shape(codec.width, codec.height, f"the video '{path}'")
                fmt = codec.format  # more than 8 bits per sample: read 16-bit grey
                self.bits16 = fmt is not None and max((c.bits for c in fmt.components), default=8) > 8
                rate = stream.average_rate or stream.base_rate  # frames/s as the container records it
                self.frame_rate_hz = float(rate) if rate else None
                # Containers do not all record the frame count: count by demuxing (no decoding).
                self.n = 0
                for packet in container.demux(stream):
                    if packet.size > 0:
                        self.n += 1
                        if self.n > MAX_FRAMES:
                            check_frame_count(self.n, f"the video '{path}'")
        except av.error.FFmpegError as exc:
            if path.suffix.lower() == ".cine":
                raise ValueError(f"cannot read the Phantom cine '{path}' with PyAV/FFmpeg ({exc}): this FFmpeg build "
                                 "does not decode it (packed 10/12-bit or compressed cines often fail); export the "
                                 "frames as a TIFF sequence (Phantom PCC: File > Save as TIFF) and give that folder "
                                 "instead") from exc
            raise ValueError(f"cannot read the video '{path}': {exc}") from exc
        if self.n == 0:
            raise ValueError(f"the video '{path}' holds no frames")
        self._container, self._frames, self._next, self._last = None, None, 0, None

    def _restart(self):
        import av

        if self._container is not None:
            self._container.close()
        self._container = av.open(str(self.path))
        self._frames = self._container.decode(video=0)
        self._next = 0

    def __getitem__(self, i: int) -> np.ndarray:
        if self._last is not None and self._last[0] == i:  # the same frame again: no re-decoding
            return self._last[1]
        if self._container is None or i < self._next:
            self._restart()
        frame = None
        while self._next <= i:
            frame = next(self._frames, None)
            if frame is None:
                raise ValueError(f"the video '{self.path}' ended before frame {i}")
            self._next += 1
        check_frame_shape(frame.width, frame.height, f"frame {i} of the video '{self.path}'")
        image = frame.to_ndarray(format="gray16le" if self.bits16 else "gray")
        self._last = (i, image)
        return image


def _natural_key(path: Path) -> list:
    """Sort key of a file name with its numbers compared as numbers: frame_2 before frame_10."""
    return [(0, int(t), t) if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path.name) if t]


class ImageSequence:
    """Frames of one view: a folder of PNG/TIFF images (in name order, numbers compared as
    numbers), a multi-page TIFF or a video file."""

    def __init__(self, path):
        self.path = Path(path)
        self._video = None
        self.frame_numbers = None
        #: (height, width) every frame must have (the Recording sets it from the geometry); None: that of frame 0
        self.expected_shape = None
        if self.path.is_dir():
            self.files = sorted((p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
            if not self.files:
                raise ValueError(f"image folder '{self.path}' holds no PNG or TIFF images")
            check_frame_count(len(self.files), f"image folder '{self.path}'")
            for f in self.files:  # a FIFO or device named like a frame would block or never end
                check_regular_file(f, "frame file", max_bytes=MAX_IMAGE_FILE_BYTES)
            self._pages = None
            numbers = [frame_number_of(p) for p in self.files]
            if None not in numbers and len(set(numbers)) == len(numbers):
                order = np.argsort(numbers, kind="stable")
                self.files = [self.files[i] for i in order]
                self.frame_numbers = np.asarray(numbers, dtype=np.int64)[order]
        elif self.path.exists() and self.path.suffix.lower() in VIDEO_SUFFIXES:
            check_regular_file(self.path, "video file")
            if self.path.suffix.lower() == ".cine":
                first_no, _ = _cine_first_image_number(self.path)
            self._video = _VideoReader(self.path)
            self.files, self._pages = None, self._video.n
            if self.path.suffix.lower() == ".cine":
                self.frame_numbers = first_no + np.arange(self._video.n, dtype=np.int64)
        elif self.path.exists() and self.path.suffix.lower() in (".tif", ".tiff"):
            from PIL import Image

            try:
                with warnings.catch_warnings():  # page sizes are checked against fluororeg's limit on reading
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with open_regular(self.path, "multi-page TIFF file") as fh, Image.open(fh) as img:
                        self._pages = getattr(img, "n_frames", 1)
            except (OSError, EOFError, SyntaxError, Image.DecompressionBombError) as exc:  # SyntaxError: Pillow, damaged TIFF
                raise ValueError(f"cannot read the TIFF file '{self.path}': {exc}") from exc
            check_frame_count(self._pages, f"the TIFF file '{self.path}'")
            self.files = None
        elif not self.path.exists():
            raise FileNotFoundError(f"image sequence '{self.path}' does not exist")
        else:
            raise ValueError(f"image sequence '{self.path}': expected a folder of PNG/TIFF images, a "
                             f"multi-page TIFF file or a video ({', '.join(VIDEO_SUFFIXES)})")

        if self.frame_numbers is None:
            self.frame_numbers = np.arange(len(self), dtype=np.int64)
        check_frame_numbers(self.frame_numbers, f"image sequence '{self.path}'")
        self.frame_numbers.flags.writeable = False

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else int(self._pages)

    @property
    def thread_safe_reads(self) -> bool:
        """Whether frames may be read on several threads at once: each read of an image or TIFF
        page opens its own file; a video's reader is sequential."""
        return self._video is None

    @property
    def frame_rate_hz(self) -> float | None:
        """A video's frame rate as its container records it; None for images."""
        return self._video.frame_rate_hz if self._video is not None else None

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"frame index {i} out of range for {len(self)} frames of '{self.path}'")
        if self._video is not None:
            return self._checked(self._video[i], i, self.path)
        # Pillow reads PNG and TIFF (also LZW-compressed, 8/16-bit and float pages).
        from PIL import Image

        path, page = (self.files[i], 0) if self.files is not None else (self.path, i)
        # A frame file was checked when listed; again now: it may have been replaced since.
        what, limit = ("frame file", MAX_IMAGE_FILE_BYTES) if self.files is not None else ("multi-page TIFF file", None)
        try:
            with warnings.catch_warnings():  # the size is checked below, against fluororeg's own limit
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with open_regular(path, what, max_bytes=limit) as fh, Image.open(fh) as im:
                    im.seek(page)
                    # the declared size before any pixel is decoded
                    check_frame_shape(im.size[0], im.size[1], self._frame_words(i, path))
                    img = np.asarray(im)
        except Image.DecompressionBombError as exc:  # Pillow's own limit (twice its MAX_IMAGE_PIXELS)
            raise ValueError(f"{self._frame_words(i, path)}: {exc}; fluororeg reads at most {MAX_FRAME_PIXELS:,} "
                             "pixels (fluororeg.io.limits.MAX_FRAME_PIXELS)") from None
        except (OSError, EOFError, SyntaxError) as exc:  # Pillow: SyntaxError for a damaged TIFF
            raise ValueError(f"cannot read {self._frame_words(i, path)}: {exc}") from exc
        return self._checked(img, i, path)

    def _checked(self, img: np.ndarray, i: int, path) -> np.ndarray:
        """A decoded frame as float32 grey levels after checking its type, size and values."""
        if img.dtype == bool:
            img = img.astype(np.uint8)
        if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
            raise ValueError(f"{self._frame_words(i, path)} holds {img.dtype} values: expected integer or real grey "
                             "levels")
        if img.ndim == 3:  # RGB(A) -> grey
            img = img[..., :3].mean(axis=-1)
        if img.ndim != 2:
            raise ValueError(f"{self._frame_words(i, path)} has shape {img.shape}: expected a grey image")
        expected = self.expected_shape
        if expected is None and i != 0 and len(self):
            expected = self[0].shape  # all frames of a sequence have one size
            self.expected_shape = expected
        if expected is not None and img.shape != tuple(expected):
            raise ValueError(f"{self._frame_words(i, path)} is {img.shape[1]} x {img.shape[0]} px but the sequence's "
                             f"frames are {expected[1]} x {expected[0]} px")
        out = img.astype(np.float32)
        if not np.all(np.isfinite(out)):
            bad = int(np.count_nonzero(~np.isfinite(out)))
            raise ValueError(f"{self._frame_words(i, path)} holds {bad} non-finite pixel values (NaN, infinity or "
                             "beyond float32)")
        return out


    def _frame_words(self, i: int, path) -> str:
        """How messages name the i-th frame: by its frame number (the one in its file name, kept
        in every result), with its file, or the page or video frame it was read from."""
        number = int(self.frame_numbers[i]) if self.frame_numbers is not None else i
        if self.files is not None:
            return f"frame {number} ('{path}')"
        return f"frame {number} ({'page' if self._video is None else 'video frame'} {i} of '{self.path}')"


@dataclass
class Recording:
    """Two image sequences of the same frames and the dual-fluoroscope geometry."""

    sequences: tuple  # (ImageSequence, ImageSequence)
    geometry: object  # fluororeg.calibration.DualGeometry
    path: Path | None = None
    frame_rate_hz: float | None = None  # acquisition rate (frames/s); None: unknown

    def __post_init__(self):
        if len(self.sequences) != 2:
            raise ValueError(f"a recording needs two image sequences, got {len(self.sequences)}")
        numbers = [np.asarray(getattr(s, "frame_numbers", np.arange(len(s)))) for s in self.sequences]
        if not np.array_equal(numbers[0], numbers[1]):
            only = [sorted(set(numbers[k].tolist()) - set(numbers[1 - k].tolist())) for k in range(2)]
            if only[0] or only[1]:
                counts = (f"the views have different frame counts [{len(numbers[0])}, {len(numbers[1])}]"
                          if len(numbers[0]) != len(numbers[1]) else "the views hold different frames")
                raise ValueError(f"{counts}: view 1 has frames {only[0][:20]} that view 2 lacks, view 2 has "
                                 f"{only[1][:20]} that view 1 lacks (frames are paired by the numbers in their file "
                                 f"names)")
            raise ValueError(f"the views number their frames in different orders: {numbers[0][:10].tolist()} and "
                             f"{numbers[1][:10].tolist()}")
        if len(self.geometry.views) != 2:
            raise ValueError(f"the geometry has {len(self.geometry.views)} views, expected 2")
        if self.frame_rate_hz is None:
            rates = {getattr(seq, "frame_rate_hz", None) for seq in self.sequences}
            if len(rates) == 1:  # both videos of the same rate (or both without one)
                self.frame_rate_hz = rates.pop()
        else:
            rate = self.frame_rate_hz
            if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) \
                    or not (np.isfinite(rate) and 0 < rate <= MAX_FRAME_RATE_HZ):
                raise ValueError(f"frame_rate_hz = {rate!r}: expected a positive number of frames per second, at "
                                 f"most {MAX_FRAME_RATE_HZ:g}")
            self.frame_rate_hz = float(rate)
        check_frame_count(len(self.sequences[0]), "recording")
        wrong = []  # every view's mismatch in one message
        for k, (seq, view) in enumerate(zip(self.sequences, self.geometry.views)):
            h, w = seq[0].shape
            if (w, h) != (view.width, view.height):
                wrong.append(f"view {k + 1}: frames are {w} x {h} px but the geometry says "
                             f"{view.width} x {view.height}")
            if hasattr(seq, "expected_shape"):  # every later frame must have this size too
                seq.expected_shape = (view.height, view.width)
        if wrong:
            raise ValueError("; ".join(wrong))

    def __len__(self) -> int:
        return len(self.sequences[0])

    @property
    def frame_numbers(self) -> np.ndarray:
        """[F] int: the lab's frame number of each frame (see the module docstring)."""
        return getattr(self.sequences[0], "frame_numbers", np.arange(len(self)))

    def index_of(self, frame_number: int) -> int:
        """The position (0 .. F-1) of the frame with number ``frame_number``."""
        hits = np.nonzero(self.frame_numbers == int(frame_number))[0]
        if not len(hits):
            fn = self.frame_numbers
            raise ValueError(f"frame {frame_number} is not in the recording (its frames: {fn[:10].tolist()}"
                             f"{' ...' if len(fn) > 10 else ''})")
        return int(hits[0])

    def frame(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sequences[0][i], self.sequences[1][i]

    def read(self, view: int, positions, num_threads: int = 0) -> list[np.ndarray]:
        """View ``view``'s (0 or 1) frames at ``positions``, in order: decoded on ``num_threads``
        threads (0: the process's count) where its sequence allows (``thread_safe_reads``: image
        folders and TIFF files), else one after the other (videos, other sequences)."""
        seq = self.sequences[view]
        positions = [int(i) for i in positions]
        if getattr(seq, "thread_safe_reads", False):
            from fluororeg.core.threads import thread_map

            return thread_map(seq.__getitem__, positions, num_threads)
        return [seq[i] for i in positions]

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for i in range(start, len(self) if stop is None else min(stop, len(self))):
            a, b = self.frame(i)
            yield i, a, b


def open_recording(path=None, *, views: Sequence | None = None, geometry=None,
                   frame_rate_hz: float | None = None) -> Recording:
    """Open a recording folder (with recording.json), or two sequences and a geometry file
    (and optionally their frame rate)."""
    from fluororeg.calibration.geometry_file import DualGeometry, load_geometry

    if path is not None:
        folder = Path(path)
        manifest = folder / "recording.json"
        if not manifest.exists():
            raise FileNotFoundError(f"'{manifest}' not found: not a recording folder (or pass views= and geometry=)")
        try:
            meta = json.loads(read_text(manifest, "recording manifest"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"'{manifest}' is not valid JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != "fluororeg-recording":
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"'{manifest}' has format {got!r}, expected 'fluororeg-recording'")
        if meta.get("version", MANIFEST_VERSION) != MANIFEST_VERSION:
            raise ValueError(f"'{manifest}' has version {meta.get('version')!r}: only version {MANIFEST_VERSION} is "
                             "supported")
        if not (isinstance(meta.get("views"), list) and len(meta["views"]) == 2
                and all(isinstance(v, str) for v in meta["views"])):
            raise ValueError(f"'{manifest}': 'views' is {meta.get('views')!r}, expected the two image sequences' "
                             "paths, e.g. [\"view1\", \"view2\"]")
        if not isinstance(meta.get("geometry"), str):
            raise ValueError(f"'{manifest}': 'geometry' is {meta.get('geometry')!r}, expected the geometry file's path")
        seqs = tuple(ImageSequence(folder / v) for v in meta["views"])
        try:
            rec = Recording(seqs, load_geometry(folder / meta["geometry"]), folder, meta.get("frame_rate_hz"))
        except ValueError as exc:
            raise ValueError(f"'{manifest}': {exc}") from exc
        if "frames" in meta and (isinstance(meta["frames"], bool) or meta["frames"] != len(rec)):
            raise ValueError(f"'{manifest}' says {meta['frames']!r} frames but the views hold {len(rec)}")
        listed = meta.get("frame_numbers")
        if "frame_numbers" in meta and listed != rec.frame_numbers.tolist():
            listed = listed[:10] if isinstance(listed, list) else repr(listed)[:40]
            raise ValueError(f"'{manifest}' lists frames {listed} but the views hold frames "
                             f"{rec.frame_numbers[:10].tolist()} (files added or removed since?)")
        return rec
    if views is None or geometry is None:
        raise ValueError("give a recording folder, or both views= (two sequences) and geometry=")
    geo = geometry if isinstance(geometry, DualGeometry) else load_geometry(geometry)
    return Recording(tuple(ImageSequence(v) for v in views), geo, frame_rate_hz=frame_rate_hz)


def write_recording_manifest(folder, views=("view1", "view2"), geometry="geometry.json",
                             frames: int | None = None, frame_rate_hz: float | None = None, **extra) -> Path:
    """Write recording.json for a folder laid out as described above."""
    meta = {"format": "fluororeg-recording", "version": MANIFEST_VERSION, "views": list(views), "geometry": geometry}
    if frames is not None:
        meta["frames"] = int(frames)
    if frame_rate_hz is not None:
        meta["frame_rate_hz"] = float(frame_rate_hz)
    meta.update(extra)
    path = Path(folder) / "recording.json"
    atomic_write_text(path, json.dumps(meta, indent=2))
    return path


def init_recording(views: Sequence, geometry, out, frame_rate_hz: float | None = None) -> Path:
    """Make ``out`` a recording folder for a lab's own data: ``views`` are the two image
    sequences (folders of PNG/TIFF frames, multi-page TIFFs, videos or Phantom .cine files;
    left where they are and referenced by path), ``geometry`` a geometry file or a
    :class:`~fluororeg.calibration.geometry_file.DualGeometry` (written to
    ``out/geometry.json``), ``frame_rate_hz`` the acquisition rate if known. The views are
    opened and checked first (frames paired by number, sizes matching the geometry), so a
    written recording.json always opens. Returns its path."""
    import os

    from fluororeg.calibration.geometry_file import DualGeometry, load_geometry, save_geometry

    views = [Path(v) for v in views]
    if len(views) != 2:
        raise ValueError(f"a recording needs two views (one image sequence per fluoroscope), got {len(views)}")
    geo = geometry if isinstance(geometry, DualGeometry) else load_geometry(geometry)
    rec = Recording(tuple(ImageSequence(v) for v in views), geo, frame_rate_hz=frame_rate_hz)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    geo_path = out / "geometry.json"
    if isinstance(geometry, DualGeometry) or not geo_path.exists() or not geo_path.samefile(geometry):
        save_geometry(geo_path, geo)

    def ref(p: Path) -> str:
        p = p.resolve()
        rel = os.path.relpath(p, out.resolve())
        return Path(rel).as_posix() if not rel.startswith("..") else p.as_posix()

    return write_recording_manifest(out, [ref(v) for v in views], "geometry.json", frames=len(rec),
                                    frame_rate_hz=rec.frame_rate_hz, frame_numbers=rec.frame_numbers.tolist())
