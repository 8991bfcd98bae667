"""The style translator's X-ray training crops: recordings -> crops by the one crop rule.

:func:`xray_training_crops` iterates recordings (folders with ``recording.json``, or
:class:`~fluororeg.io.recording.Recording` objects) and crops every ``every``-th frame of both
views exactly as the registration pipeline crops them for style translation
(:func:`fluororeg.inference.crops.recording_crop_boxes` and
:func:`~fluororeg.inference.crops.view_crops`, ``crop_pixel_mm`` per pixel at the subject):
centred on the bone located as the pipeline locates it (``locate``: the subject and a
detector), else on the field of view, so the translator learns the X-ray domain the pipeline
will show it.
A recording needs its geometry (the crop's pixel size at the subject depends on it): frames
without one cannot be cropped by that rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fluororeg.inference.crops import recording_crop_boxes, view_crops

__all__ = ["xray_training_crops", "iter_recordings"]


def iter_recordings(source):
    """The :class:`~fluororeg.io.recording.Recording` objects of ``source``: a recording folder,
    a Recording, or a list/tuple of these."""
    from fluororeg.io.recording import Recording, open_recording

    if isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("the X-ray source list is empty: expected recording folders or Recording objects")
        for s in source:
            yield from iter_recordings(s)
        return
    if isinstance(source, Recording):
        yield source
        return
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.exists():
            raise FileNotFoundError(f"X-ray recording '{p}' does not exist")
        if not (p / "recording.json").is_file():
            raise ValueError(f"'{p}' is not a recording folder (no recording.json): training crops are made as the "
                             "pipeline makes them, which needs the recording's geometry")
        yield open_recording(p)
        return
    raise TypeError(f"X-ray source {type(source).__name__}: expected a recording folder, a Recording or a list of these")


def xray_training_crops(recordings, size: int = 128, crop_pixel_mm: float = 2.0, every: int = 1, *,
                        max_frames: int | None = None, return_boxes: bool = False, locate=None):
    """uint8 [n, size, size] crops of both views of every ``every``-th frame of the given
    recordings (see the module docstring), view 1's frames then view 2's per recording;
    ``max_frames`` caps the frames per view and recording. With ``return_boxes`` also the
    :class:`~fluororeg.inference.crops.CropBox` of each crop, in order.

    ``locate``: ``(subject, detector)`` to centre each crop on the bone as the pipeline's
    recentring pass does before it translates (:func:`fluororeg.pipeline.register.locate_bone_boxes`:
    Beer-Lambert detection and landmark registration), so the translator trains on the crops it
    will translate; None: the field-of-view crop of every frame."""
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 8:
        raise ValueError(f"size {size!r}: expected an integer >= 8")
    if not isinstance(every, (int, np.integer)) or isinstance(every, bool) or every < 1:
        raise ValueError(f"every {every!r}: expected an integer >= 1")
    if max_frames is not None and (not isinstance(max_frames, (int, np.integer)) or max_frames < 1):
        raise ValueError(f"max_frames {max_frames!r}: expected None or an integer >= 1")
    if not (np.isfinite(crop_pixel_mm) and crop_pixel_mm > 0):
        raise ValueError(f"crop_pixel_mm = {crop_pixel_mm!r}: expected a positive size in mm")
    if locate is not None:
        from fluororeg.pipeline.register import PipelineOptions, locate_bone_boxes

        subject, detector = locate
        detector.check_subject(subject)
        options = PipelineOptions(style="log", crop_pixel_mm=float(crop_pixel_mm), refine=False)
    out, out_boxes = [], []
    for rec in iter_recordings(recordings):
        fovs, fixed = recording_crop_boxes(rec, int(size), crop_pixel_mm)
        frames = np.arange(0, len(rec), every)[:max_frames]
        images = [[rec.sequences[k][int(f)] for f in frames] for k in range(2)]
        pairs = [(fixed[0], fixed[1])] * len(frames) if locate is None else \
            locate_bone_boxes(rec, images, subject, detector, options, fovs, fixed, int(size))
        for k in range(2):
            boxes = [pair[k] for pair in pairs]
            out.append(view_crops(images[k], boxes, fovs[k], int(size)))
            out_boxes += boxes
    crops = np.concatenate(out)
    return (crops, out_boxes) if return_boxes else crops
