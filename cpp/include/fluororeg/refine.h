// Intensity-based refinement of registered poses: maximise the similarity between cone-beam
// DRRs of the subject's CT at the pose and both (undistorted) X-ray images, over 6 DOF.
//
// Method (chosen by measurement, see benchmarks/bench_refine.py):
// - Similarity per view: gradient correlation (the mean of the normalised cross-correlations of
//   the x and y image gradients, central differences) or plain normalised cross-correlation
//   of the intensities, over a region of interest: the projection of the bone (a mask volume,
//   or the volume itself) at the current pose, dilated by a margin, within the usable part of
//   the image (an optional per-view mask, e.g. the intensifier's circular field of view).
// - Both views in one objective, sum_v w_v (2 - 2 s_v) (per frame: RefineInput::view_weights,
//   so a frame one of whose views failed is refined against the other alone):
//   Levenberg-Marquardt on the residuals of the normalised feature vectors (zero mean, unit
//   norm). The 6-DOF Jacobian comes from one render of the region's pixels only with the
//   renderer's pose gradients (the derivatives of the rendered trilinear interpolant, chained
//   through the features and their normalisation), fresh every iteration; finite differences
//   of 12 (central) or 6 renders remain as options (RefineOptions::analytic_jacobian says what
//   they cost). A level's first Jacobian render also gives its start pose's residuals. After
//   a failed step the damping grows until the step changes
//   by 10 %, and a failed step within the level's tolerance ends the level: no render is spent
//   on a step about equal to one that failed.
//   Measured on simulated frames (benchmarks/bench_refine.py): gradient correlation beat NCC
//   (0.06 vs 0.15 deg, 0.04 vs 0.33 mm median).
// - Coarse to fine: level l halves the images l times (2x2 means) and the volume with them.
// - Frames run in parallel (one frame per thread); a single frame spreads its renders over
//   the threads instead. The renders (RenderConePixels) run on the CPU or on CUDA
//   (RefineOptions::device); everything else is host code. On CUDA, the renders of
//   cuda_frames_in_flight frames are gathered into one launch per round (RenderConePixelsBatch),
//   a frame's two views in the same round (regions and residuals alike).
// Poses are world_from_model (rad, mm), X_world = R X_model + tau (see geometry.h).
// Invalid arguments throw std::invalid_argument naming the value.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "fluororeg/geometry.h"
#include "fluororeg/render.h"

namespace fluororeg {

enum class RefineSimilarity { kGradientCorrelation = 0, kNcc = 1 };

// Outcome of one frame. Only kConverged passed the quality gate.
enum class RefineStatus {
  kConverged = 0,      // ended with similarity >= min_similarity after a small pose change
  kMovedFar = 1,       // the pose changed more than max_rotation_change_deg / _mm allow
                       // (checked after each level: such a frame stops there)
  kLowSimilarity = 2,  // ended below min_similarity: probably not at the true pose
  kNoOverlap = 3,      // the bone does not project into any used view
  kInvalidStart = 4,   // the start pose holds NaN (e.g. landmark registration failed)
};

struct RefineOptions {
  RefineSimilarity similarity = RefineSimilarity::kGradientCorrelation;
  // Pyramid levels, coarse to fine (each halves the resolution). Four levels from the 128 px
  // finest level of a 512 px frame start at 16 px and take landmark poses 5-10 deg off
  // (benchmarks/bench_refine.py: 86 of 96 independent-renderer frames converged, 83 with three).
  int num_levels = 4;
  int finest_level = 0;      // 0: the images' own resolution; 1: half of it, ...
  double weight_view1 = 1.0;  // weights of the two views in the objective (>= 0, one > 0)
  double weight_view2 = 1.0;
  int max_iterations = 10;   // Levenberg-Marquardt iterations per level
  double roi_margin_px = 4.0;  // dilation of the projected bone region, in level pixels
  int min_roi_pixels = 32;   // fewer pixels in a view's region: that view is not used
  double step_voxels = 1.0;  // ray-marching step (voxel units of each level's volume)
  // With analytic_jacobian false: the finite-difference step, in level pixels at the object.
  // Measured (before the analytic Jacobian) on 96 independent-renderer
  // frames from landmark poses: with 0.5 px, 4 frames stopped 2-5 deg off in a flat valley of the
  // similarity (the truth scored higher); 1.5 px took 3 of them to the truth with the same
  // median precision (2 px and more cost precision on other frames).
  double fd_step_px = 1.5;
  // Central differences (12 renders instead of 6 per Jacobian), fresh every iteration: the
  // one-sided and Broyden-updated Jacobians stop the search early and bias it (measured on
  // 96 independent-renderer frames from landmark poses: median 0.29 deg / 0.27 mm with them,
  // 0.11 deg / 0.13 mm with central differences, ~1.6x the time).
  bool central_differences = true;
  // After the first iteration of a level, update the Jacobian by rank-1 secant (Broyden)
  // steps instead of new finite differences (1 render per iteration instead of 7); a step
  // that fails with an updated Jacobian takes finite differences again. Cheaper, less precise.
  // Finite differences only (analytic_jacobian false; ValidateRefineOptions refuses both).
  bool broyden_updates = false;
  // The Jacobian from the renderer's pose gradients (ConePixelRequest::pose_gradient: one
  // render of the region with derivatives, about the cost of two, instead of 12 renders of
  // central differences): the derivative at the pose itself (fd_step_px and
  // central_differences are then not used, nor broyden_updates). The refinement forms its
  // normal equations J^T J, J^T r from sums over the region without making J (making J and
  // its products took about 40 % of a frame's host work: RefineResult::host_seconds 23.0 ->
  // 13.6 ms per frame pair on bench_long's trained frames, the poses the same). Measured against
  // central differences (benchmarks/bench_refine.py, 2 cores, the same frames and starts):
  // 3-10 deg starts, 6 simulated frames: 0.018 vs 0.019 deg, 0.028 vs 0.025 mm median; frames
  // of the independent renderer (plastimatch): 0.025 vs 0.076 deg, 0.019 vs 0.234 mm, with
  // intensifier effects 0.125 vs 0.121 deg, 0.238 vs 0.358 mm; every frame recovered by both;
  // from a trained detector's landmark poses on 96 independent-renderer frames (two headers):
  // 0.085 vs 0.124 deg, 0.052 vs 0.213 mm with the bone inside both fields, 2 frames stopped in
  // a hollow of the similarity just below the recording's typical value, which central
  // differences' 1.5 px steps bridge: refine_poses (Python) refines such near misses again with
  // them, then 94 of 96 registered by both, none more than 5 deg / 5 mm off, 0.39 vs 1.70 s per
  // frame pair for the whole stage;
  // 1.5e5 vs 1.1e6 rays, 27 vs 50 render calls, 0.12 vs 0.65 s per frame pair (5.4x; a try
  // that would lead to another iteration is rendered with its gradients, see RefineLevel).
  bool analytic_jacobian = true;
  // The finest level stops when a step rotates less than tolerance_deg and moves less than
  // tolerance_mm (coarser levels: x 2^level). Measured against 0.01 / 0.01 on the 96
  // independent-renderer frames from landmark poses: 10 % fewer rays, poses within 0.012 deg /
  // 0.014 mm, medians 0.124 vs 0.123 deg and 0.213 mm both, the same frames flagged; the
  // simulated and plastimatch frames of bench_refine --quick unchanged to 0.0003 deg.
  // (0.05 / 0.05: 21 % fewer rays, poses within 0.023 deg, medians 0.127 deg / 0.212 mm.)
  double tolerance_deg = 0.02;
  double tolerance_mm = 0.02;
  // Quality gate. min_similarity: the least weighted mean similarity of a passed frame. Frames
  // within 1 deg / 1 mm of the truth end at 0.92-0.99 (bench_refine: own renderer, the NumPy
  // reference, plastimatch, plastimatch with intensifier effects; two CTs); a head CT refined
  // from a start about 160-180 deg off (turned about the vertical: a near-mirror image) ends
  // in a false optimum at 0.51-0.55 (bench_long's spot detector: 0.5 let 15 of 300 frames
  // through as registered, every one of them 160-180 deg off).
  double min_similarity = 0.6;
  double max_rotation_change_deg = 15.0;
  double max_translation_change_mm = 15.0;
  int num_threads = 0;       // 0: all hardware threads
  // Where the region-of-interest renders run (RenderConePixels): the CPU, or the CUDA device
  // (the same per-ray body with the exact trilinear sampler, so both give the same values to
  // rounding; throws std::runtime_error when CUDA is absent).
  Device device = Device::kCpu;
  // On CUDA, frames refined together: their renders are gathered into one launch per round
  // (more frames, fewer and larger launches; each frame in flight holds a host thread). On an
  // H100 with 16 host cores, 256 frames took 6.9 / 6.0 / 5.9 / 6.1 ms each with 32 / 64 / 128 /
  // 256 in flight (benchmarks/bench_refine.py --device cuda times them).
  int cuda_frames_in_flight = 128;
  // On CUDA, the host threads of each gathered round's render call: they copy the round's
  // tables up (pixel lists) and its values and pose gradients back into the frames' buffers
  // (about 20-40 MB per round of 128 frames of bench_long's 192 px head frames). 1: the render
  // thread alone; a call starts and joins its other threads anew (with the earlier ungathered
  // calls, thousands per recording, that cost more than the device took). Not yet measured with
  // gathered rounds: bench_refine.py --device cuda times 1, 4 and 8.
  int cuda_render_threads = 1;
};

// The volumes a refinement renders, prepared once for many calls: the attenuation and
// region-of-interest pyramids with the renderer's block occupancy and support boxes, and on
// CUDA their device copies (made at the first CUDA call, then kept). Owns copies of the
// voxels. Read-only once made: calls on any threads may share it. Without it, every
// RefineFrames call prepares the pyramids again, and on CUDA uploads them again: a one-frame
// call took 31 ms that way against 1.5 ms with prepared volumes (a 108 x 128 x 128 head
// volume, no pose to refine, 2 cores), which a recording pays per chunk and per tracking retry.
class RefineVolumes {
 public:
  // volume: attenuation per mm at the finest level's resolution; bone: region-of-interest
  // volume (> 0 = bone), or bone.data == nullptr (the volume serves); num_levels: 1 to 8.
  // Throws std::invalid_argument naming a bad value.
  RefineVolumes(const VolumeGrid& volume, const VolumeGrid& bone, int num_levels);
  ~RefineVolumes();
  int num_levels() const;

  struct Levels;  // internal (refine.cc)
  const Levels& levels() const { return *levels_; }

 private:
  std::shared_ptr<const Levels> levels_;
};

// Everything one refinement call needs; arrays are owned by the caller.
struct RefineInput {
  // The volumes, prepared (then volume and bone are not read; prepared for at least the levels
  // the call needs), or nullptr: volume and bone, prepared for this call.
  const RefineVolumes* prepared = nullptr;
  VolumeGrid volume;          // attenuation per mm at the finest level's resolution
  VolumeGrid bone;            // region-of-interest volume (> 0 = bone); data == nullptr: volume
  ConeView views[2];          // world frame; both views of one size W x H
  const float* images = nullptr;         // [F, 2, H, W] undistorted, line-integral-like
                                         // (bone bright); see python/fluororeg/refine.py
  const uint8_t* image_masks = nullptr;  // [2, H, W] 1 = usable pixel, or nullptr (all)
  // [F, 2] per-frame factors on the options' view weights (>= 0; 0: that view is left out of
  // the frame's objective, e.g. one the landmark gate found failed), or nullptr (1, 1). Every
  // frame needs one view with a positive weight.
  const double* view_weights = nullptr;
};

struct RefineResult {
  double pose[6] = {0, 0, 0, 0, 0, 0};  // refined world_from_model, rad / mm
  double similarity[2] = {0, 0};        // per view at the final pose, finest level (NaN: unused)
  double similarity_total = 0;          // weighted mean over the used views
  double rotation_change_deg = 0;       // angle of R_refined R_start^T
  double translation_change_mm = 0;     // |tau_refined - tau_start|
  int iterations = 0;                   // LM iterations over all levels
  // The frame's render work, whatever the device: its render calls (on CUDA, the gathered
  // rounds it waited for) and its rays (pixels x poses over those calls).
  int render_calls = 0;
  long long rendered_rays = 0;
  double seconds = 0;                   // wall-clock of this frame
  // CPU seconds of the frame's own host work (image pyramids, regions, features, Jacobians,
  // steps) on its thread, its render calls excluded: the work a GPU does not take over. On
  // CUDA, where a worker thread waits for the gathered renders, this is what the host's cores
  // must keep up with (bench_refine, bench_long).
  double host_seconds = 0;
  bool converged = false;               // status == kConverged
  RefineStatus status = RefineStatus::kInvalidStart;
};

// Throws std::invalid_argument naming the first bad option.
void ValidateRefineOptions(const RefineOptions& options);

// Refine F frames from init_poses [F, 6] (rad, mm); results [F].
void RefineFrames(const RefineInput& input, const double* init_poses, int num_frames,
                  RefineResult* results, const RefineOptions& options = {});

// The similarity of the options' kind between rendered DRRs and the images at given poses,
// at one pyramid level, over the region of interest of each pose (what RefineFrames
// maximises). similarity [F, 2] (NaN: view's region too small); roi [F, 2, H_l, W_l] (1 where
// the similarity is evaluated) when not null, with H_l = H >> level, W_l = W >> level.
void EvaluateRefineSimilarity(const RefineInput& input, const double* poses, int num_frames,
                              int level, double* similarity, uint8_t* roi,
                              const RefineOptions& options = {});

// Image similarities over a mask, images [H, W]: gradient correlation (central differences;
// mask pixels on the image border are ignored) and normalised cross-correlation. A constant
// image (zero variance) gives 0.
double GradientCorrelation(const float* a, const float* b, const uint8_t* mask, int width,
                           int height);
double NormalizedCrossCorrelation(const float* a, const float* b, const uint8_t* mask, int width,
                                  int height);

// The view of pyramid level `level`: (W >> level) x (H >> level) pixels of 2^level times the
// pitch, each the mean of the 2^level x 2^level pixels it covers.
ConeView PyramidView(const ConeView& view, int level);

}  // namespace fluororeg
