"""The pipeline's intensity-refinement stage: a recording's frames, undistorted and turned
into line integrals inside each intensifier's field of view, refined by
:func:`fluororeg.core.refine.refine_poses` after the landmark registration (one call from
:func:`fluororeg.pipeline.register.register_recording`), and the columns it adds to poses.csv.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from fluororeg.core.refine import (DEFAULT_PIXEL_MM, RefineOptions, RefineResult, check_min_similarity,
                                   default_refine_options, intensity_to_line_integrals, refine_poses)
from fluororeg.core.registration import INPUT_STATUSES as INPUT_FLAGS
from fluororeg.core.registration import REGISTERED_STATUSES as REGISTERED_LANDMARK

__all__ = ["REFINE_COLUMNS", "TWIN_COLUMNS", "REFINED_STATUS", "TRACKED_STATUS", "ONE_VIEW_STATUS",
           "REFINE_FAILURE_STATUSES", "REFINABLE_STATUSES", "field_of_view", "RecordingLineIntegrals",
           "recording_images", "refine_recording_poses"]


def field_of_view(image: np.ndarray, shrink_px: int = 3) -> np.ndarray:
    """The usable pixels [H, W] bool of an intensifier frame: everything brighter than the
    dark surround of a circular field of view (the corners' grey level), holes filled, shrunk
    by ``shrink_px``; all pixels where the corners are not darker than the image."""
    from scipy import ndimage

    img = ndimage.gaussian_filter(np.asarray(image, np.float64), 1.0)
    c = 5
    corners = np.concatenate([img[:c, :c].ravel(), img[:c, -c:].ravel(), img[-c:, :c].ravel(), img[-c:, -c:].ravel()])
    bg, hi = float(np.median(corners)), float(np.percentile(img, 99))
    if not hi > bg + 1e-6 or float(np.percentile(img, 50)) <= bg + 0.05 * (hi - bg):
        return np.ones(img.shape, bool)
    mask = img > bg + 0.05 * (hi - bg)
    lab, n = ndimage.label(mask)
    if n == 0:
        return np.ones(img.shape, bool)
    sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
    mask = ndimage.binary_fill_holes(lab == (1 + int(np.argmax(sizes))))
    if shrink_px > 0:
        mask = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1] > shrink_px
    return mask


class RecordingLineIntegrals:
    """A recording's frames as the refinement sees them: undistorted line-integral images and the
    usable-pixel masks (the intensifier's field of view, undistorted). The views' undistortion
    maps are made once; :meth:`images` reads frames and converts them in the core
    (:func:`~fluororeg.core.refine.intensity_to_line_integrals`, all cores)."""

    def __init__(self, recording, num_threads: int = 0):
        self.recording, self.num_threads = recording, num_threads
        dist = recording.geometry.distortion or (None, None)
        self.source_maps = [d.source_map() if d is not None else None for d in dist]  # [2] (x, y) [H, W] or None

    def images(self, frames=None) -> tuple[np.ndarray, np.ndarray]:
        """Undistorted line-integral images [F, 2, H, W] float32 of ``frames`` (positions; None:
        all) and the usable-pixel masks [2, H, W] uint8, found on the first of them."""
        from scipy import ndimage

        rec = self.recording
        idx = np.arange(len(rec)) if frames is None else np.asarray(frames, dtype=int)
        geom = rec.geometry
        H, W = geom.views[0].height, geom.views[0].width
        out = np.empty((len(idx), 2, H, W), np.float32)
        masks = np.empty((2, H, W), np.uint8)
        for k in range(2):
            raw = np.empty((len(idx), H, W), np.float32)
            for j, frame in enumerate(rec.read(k, idx, self.num_threads)):
                raw[j] = frame
            fov = field_of_view(raw[0] if len(idx) else np.asarray(rec.sequences[k][0], np.float32))
            smap = self.source_maps[k]
            if smap is not None:
                fov = ndimage.map_coordinates(fov.astype(np.float32), [smap[1], smap[0]], order=0, mode="constant",
                                              cval=0.0) > 0.5
            masks[k] = fov
            out[:, k] = intensity_to_line_integrals(raw, fov, source_map=smap, num_threads=self.num_threads)
        return out, masks


def recording_images(recording, frames=None) -> tuple[np.ndarray, np.ndarray]:
    """Undistorted line-integral images [F, 2, H, W] float32 of a recording's frames and the
    usable-pixel masks [2, H, W] (the intensifier's field of view, undistorted): one call of
    :meth:`RecordingLineIntegrals.images`."""
    return RecordingLineIntegrals(recording).images(frames)


# Columns the pipeline adds to poses.csv when it refines (see refine_recording_poses).
# The depth check's columns (refine_poses' check_depth; frames whose landmark pose was held back).
TWIN_COLUMNS = ("refine_twin_similarity", "refine_twin_chosen")
REFINE_COLUMNS = ("landmark_status", "refine_status", "similarity_view1", "similarity_view2",
                  "refine_rotation_change_deg", "refine_translation_change_mm", "refine_iterations", "refine_seconds",
                  "refine_tracked", *TWIN_COLUMNS)
# Frame statuses the refinement stage sets: a landmark pose that failed the landmark gate but
# whose refinement passed the refinement's ('refined'); a frame refined from a neighbour's
# refined pose ('tracked'); the refinement's own gate failures, and frames whose pose and its
# depth-reversed twin explain the images about equally well (not registered).
REFINED_STATUS, TRACKED_STATUS = "refined", "tracked"
# A passed frame whose refinement rested on one view (the landmark path's status of that name).
ONE_VIEW_STATUS = "one_view"
REFINE_FAILURE_STATUSES = ("moved_far", "low_similarity", "no_overlap", "ambiguous_depth")
# Landmark statuses whose pose refinement starts from: registered, or held back by the
# landmark gate's residual limits (the refinement's similarity decides). The input checks'
# statuses (blank or duplicated views, a constant detector, an ambiguous mirror pick) are
# never refined: their images or detections are not to be trusted.
REFINABLE_STATUSES = ("ok", "one_view", "large_residual", "few_inliers")


def refine_recording_poses(recording, subject, poses, status, options: Optional[RefineOptions] = None,
                           *, failed_views=None, track: bool = True, chunk: Optional[int] = None,
                           device: str = "cpu", pixel_mm: float = DEFAULT_PIXEL_MM,
                           min_similarity: Optional[float] = None, progress: bool = False):
    """The pipeline's refinement step (one call from ``register_recording``): refine the
    landmark poses [F, 6] (deg, mm; NaN: none) of a recording against its frames; ``status``
    [F] are the landmark statuses; ``failed_views`` [F, 2] bool (or None: none) the views whose
    image failed the input checks (a blank or saturated view). ``device``: where the renders run
    ('cpu', 'cuda' or 'auto', :func:`~fluororeg.core.refine.refine_poses`); ``pixel_mm``: the
    finest pyramid level's pixel at the bone when ``options`` is None
    (:func:`~fluororeg.core.refine.auto_finest_level`), sized to the bone
    (:func:`~fluororeg.pipeline.register.refine_pixel_mm`): a radius refined at a head's 2 mm
    spans a dozen pixels of the 1760 px wrist frames and drifts off its pose.
    ``min_similarity``: the gate's floor when ``options`` is None (None: ``RefineOptions``' 0.6;
    see ``PipelineOptions.min_similarity``). ``progress``: a progress bar of the frames refined
    (a chunk at a time).

    Returns (poses [F, 6] with NaN rows for frames not registered, status [F] str, columns:
    dict of REFINE_COLUMNS -> [F] arrays). With refinement the image similarity is the final
    gate (measured on independent-renderer recordings: no frame whose refinement passed was
    more than 5 deg or 5 mm off, while the landmark gate let such frames through):

    - refinement passed from the frame's landmark pose: the refined pose; ``'ok'`` if the
      landmark pose was registered (``'ok'``, or ``'one_view'``: both images now agree with
      it), else ``'refined'`` (the landmark gate held it back). Such a held-back pose is also
      refined from its depth-reversed twin (``refine_poses``' ``check_depth``: a head's twin
      passed the 0.6 gate in about a third of independent-renderer frames): the clearly better
      reading is kept (``refine_twin_chosen`` when it is the twin's), and a frame where neither
      is clearly better is ``'ambiguous_depth'``, not registered (tracking from a neighbour may
      still place it);
    - passed from a neighbour's refined pose (``track``: frames without a landmark pose, or
      whose own refinement failed): ``'tracked'``;
    - failed: no pose, the refinement's status (``'low_similarity'``, ``'moved_far'``,
      ``'no_overlap'``, ``'ambiguous_depth'``); a frame that had nothing to start from, or that
      the input checks flagged, keeps its landmark status (``refine_status`` says how its
      refinement ended).

    One view alone: a frame with one failed view (``failed_views``) has no landmark pose; it is
    tracked from a neighbour's refined pose against its other view alone. A passed frame whose
    refinement rested on one view (that one, or one whose view held too little of the bone) is
    ``'one_view'``: in-plane as precise as two views, its depth the least certain part.

    Frames with a status outside :data:`REFINABLE_STATUSES` are not refined and keep theirs,
    except those one failed view flagged. Frames are read ``chunk`` at a time, the next chunk
    while one refines (tracking
    carries over from one chunk to the next; None: 64, on CUDA at least the options'
    ``cuda_frames_in_flight``, the frames whose renders are gathered into one launch).
    """
    poses = np.asarray(poses, dtype=np.float64)
    status = np.asarray(status).astype(str)
    F = len(poses)
    if len(recording) != F or len(status) != F:
        raise ValueError(f"got {F} poses and {len(status)} statuses for a recording of {len(recording)} frames")
    failed = np.zeros((F, 2), bool) if failed_views is None else np.asarray(failed_views, dtype=bool)
    if failed.shape != (F, 2):
        raise ValueError(f"failed_views has shape {np.shape(failed_views)}, expected ({F}, 2): one flag per frame "
                         "and view")
    if min_similarity is not None:
        if options is not None:
            raise ValueError("min_similarity was given with options: set options.min_similarity instead")
        min_similarity = check_min_similarity(min_similarity)
    floor = {} if min_similarity is None else {"min_similarity": min_similarity}  # else RefineOptions'
    refinable = np.isin(status, REFINABLE_STATUSES) & np.isfinite(poses).all(axis=1) & ~failed.any(axis=1)
    registered = np.isin(status, REGISTERED_LANDMARK)
    # Frames flagged by the input checks are left out, except those with one usable view (tracked
    # against it alone); the others without a pose may be tracked.
    one_usable = failed.sum(axis=1) == 1
    candidates = np.flatnonzero((refinable | ~np.isin(status, INPUT_FLAGS) | one_usable) & ~failed.all(axis=1))
    weights = np.where(failed, 0.0, 1.0)  # [F, 2] the views' weights in each frame's objective
    if chunk is None:
        from fluororeg.core.render import resolve_device

        chunk = 64
        if resolve_device(device) == "cuda":
            chunk = max(chunk, (options if options is not None else RefineOptions()).cuda_frames_in_flight)
    parts, carry = [], None  # carry: the refined pose of the previous chunk's last frame, when it passed
    frames = RecordingLineIntegrals(recording)
    chunks = [candidates[s:s + chunk] for s in range(0, len(candidates), chunk)]
    # The next chunk's frames are read and converted on a second thread while this one refines
    # (the core runs without the GIL): one thread reads, in order, so video readers are safe.
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fluororeg-frames") as reader, \
            tqdm(total=len(candidates), unit="frame", disable=not progress, desc="refine") as bar:
        pending = reader.submit(frames.images, chunks[0]) if chunks else None
        for c, idx in enumerate(chunks):
            imgs, masks = pending.result()
            pending = reader.submit(frames.images, chunks[c + 1]) if c + 1 < len(chunks) else None
            start = np.where(refinable[idx][:, None], poses[idx], np.nan)
            carried = track and carry is not None and not np.isfinite(start[0]).all()
            if carried:
                start[0] = carry
            chunk_options = options if options is not None else default_refine_options(
                recording.geometry.views, start, pixel_mm, **floor)  # sized to this chunk's poses
            # The depth check for the landmark poses the landmark gate held back: nothing but the
            # images vouches for them, and a bone's depth-reversed twin can pass the gate.
            part = refine_poses(subject.attenuation_model(), recording.geometry.views, imgs, start,
                                options=chunk_options, bone=subject.mask_model(), image_masks=masks, track=track,
                                view_weights=weights[idx], check_depth=refinable[idx] & ~registered[idx],
                                device=device)
            del imgs
            part.tracked[0] |= carried
            parts.append(part)
            bar.update(len(idx))
            carry = part.poses[-1] if part.converged[-1] else None
    columns = {
        "landmark_status": status.copy(), "refine_status": np.full(F, "not_refined", dtype=object),
        "similarity_view1": np.full(F, np.nan), "similarity_view2": np.full(F, np.nan),
        "refine_rotation_change_deg": np.full(F, np.nan), "refine_translation_change_mm": np.full(F, np.nan),
        "refine_iterations": np.zeros(F, int), "refine_seconds": np.zeros(F), "refine_tracked": np.zeros(F, bool),
        "refine_twin_similarity": np.full(F, np.nan), "refine_twin_chosen": np.zeros(F, bool),
    }
    new_poses, new_status = np.full((F, 6), np.nan), status.astype(object)
    if parts:
        res = RefineResult(*(np.concatenate([getattr(p, f.name) for p in parts])
                             for f in dataclasses.fields(RefineResult)))
        i = candidates
        columns["refine_status"][i] = res.status
        columns["similarity_view1"][i], columns["similarity_view2"][i] = res.similarity[:, 0], res.similarity[:, 1]
        columns["refine_rotation_change_deg"][i] = res.rotation_change_deg
        columns["refine_translation_change_mm"][i] = res.translation_change_mm
        columns["refine_iterations"][i], columns["refine_seconds"][i] = res.iterations, res.seconds
        columns["refine_tracked"][i] = res.tracked
        columns["refine_twin_similarity"][i], columns["refine_twin_chosen"][i] = res.twin_similarity, res.twin_chosen
        ok = res.converged
        new_poses[i[ok]] = res.poses[ok]
        landmark = status[i]
        # Views the objective used: weighted, and holding enough of the bone (a similarity). A
        # landmark pose that rested on one view ('one_view') refined against both is 'ok'.
        one_view = ok & (((weights[i] > 0) & np.isfinite(res.similarity)).sum(axis=1) == 1)
        passed = np.select([one_view, res.tracked, registered[i]],
                           [ONE_VIEW_STATUS, TRACKED_STATUS, "ok"], REFINED_STATUS)
        new_status[i[ok]] = passed[ok]
        # A failed refinement says why, unless the input checks flagged the frame (its cause).
        gate_failed = ~ok & np.isin(res.status, REFINE_FAILURE_STATUSES) & ~np.isin(landmark, INPUT_FLAGS)
        new_status[i[gate_failed]] = res.status[gate_failed]
    return new_poses, new_status.astype(str), columns
