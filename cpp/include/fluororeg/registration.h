// Point-based 3D-to-2D registration of a rigid model to dual-fluoroscope frames (the paper's
// Eq. 2 and Table 1), solved with analytic Jacobians by a small Levenberg-Marquardt (the
// screening of the mirror cases, and the contenders it brings to convergence) and by Ceres.
//
// Conventions (DESIGN.md): millimetres; radians in this C++ API (the Python layer speaks
// degrees). A pose is (theta_x, theta_y, theta_z rad, tau_x, tau_y, tau_z mm), extrinsic z-y-x
// Euler angles, R = Rx(theta_x) Ry(theta_y) Rz(theta_z), X_world = R X_model + tau. Image
// coordinates: x = column, y = row, origin at the centre of the top-left pixel.
//
// Residual of landmark i in view k (k = 0: view 1, k = 1: view 2), on that view's intensifier plane:
//   e_ki = sqrt(w_ki) * (P_k(R X_i + tau) - U_ki)   [2] mm along the intensifier axes (u, v),
// P_k = ProjectToIntensifierMm, U_ki = the detection converted from pixels to mm relative to D,
// w_ki = the optional weight (confidence; 1 when no weights are given).
// Only the n_vis landmarks detected inside both fields of view (finite, inside the image,
// weight > 0 in both views) take part. Objectives (the value reported as `objective`):
//   kLeastSquares: sum_k sum_i rho(|e_ki|^2)                   (mm^2; rho(s) = s without loss)
//   kFrobenius:    sum_k sqrt(sum_i |e_ki|^2) = the paper's Eq. 2 (mm)
// The robust losses act per landmark and view (only with kLeastSquares), scale a mm:
//   Huber:  rho(s) = s for s <= a^2, 2 a sqrt(s) - a^2 otherwise
//   Cauchy: rho(s) = a^2 log(1 + s / a^2)
//
// Inside the solver the rotation is a rotation vector phi about the initial rotation R0,
// R = exp([phi]x) R0 (singular only 2 pi away from the start), so gimbal lock cannot stall
// it; results are reported in the Euler convention above.
//
// Mirror strategy (Table 1): the two images cannot tell left from right, so the problem is
// solved for four cases, mirror_case = f1 + 2 * f2 with f1 (f2) = 1 when the detections of
// every symmetric pair (i, j) are swapped in view 1 (view 2) (detections and weights move together);
// the case with the lowest objective wins. n_vis may differ between cases when a pair is
// only half detected.
//
// A batch (RegisterBatch) is a recording's frames: each frame starts from the paper's pose,
// a given one or the previous frame's registered pose (InitMode), then the two views'
// agreement is checked over the batch (CheckViewAgreement): when the detector failed in one
// view, the pose rests on the view that fits alone (status one_view) or the frame is left
// unregistered (views_disagree).
//
// Files: so3.h (rotations), geometry.h (poses, cone projection), src/registration/
// residual.cc (cost), validation.cc, screening.cc (cheap LM that screens the mirror cases, over
// the same cost evaluated four landmarks at a time),
// frame_solver.cc (one frame, four cases), batch.cc (a recording's batch).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fluororeg/geometry.h"

namespace fluororeg {

enum class ObjectiveMode { kLeastSquares = 0, kFrobenius = 1 };
enum class RobustLoss { kNone = 0, kHuber = 1, kCauchy = 2 };
// Where each frame's solve starts: kPaper: theta = 0, tau = SystemCentre (the paper's);
// kGiven: init_poses [F, 6] (a row of six NaN: that frame starts from the paper's start);
// kPrevious: the previous frame's registered pose, in frame order (sequential), the paper's
// start for the first frame and whenever that solve fails.
enum class InitMode { kPaper = 0, kGiven = 1, kPrevious = 2 };

// Every status a frame can end with (the values are stable; the names are those of the
// CSV files). Frames with a pose: kOk and kOneView.
enum class RegistrationStatus {
  kOk = 0,               // solved; pose valid (see `converged` for the solver's verdict)
  kTooFewLandmarks = 1,  // fewer than min_visible landmarks in every mirror case; pose NaN
  kFailed = 2,           // the solver could not evaluate the objective (e.g. the model
                         // behind a source at the initial pose) in every case; pose NaN
  kOneView = 3,          // the two views disagreed; the pose rests on the view that fits
                         // alone (its depth is the least certain part)
  kViewsDisagree = 4,    // the two views disagreed and both fit alone: pose NaN (the
                         // two-view residuals stay on record)
  // The quality gate (absolute limits, ApplyQualityGate): the pose stays on record for
  // inspection but the frame is not registered.
  kLargeResidual = 5,    // a view's RMS residual at the bone exceeds max_residual_mm
  kFewInliers = 6,       // a view has too few landmarks within max_residual_mm at the bone
  // Input checks decided by the pipeline before registration (never set by the core):
  kBlankView = 7,        // a view is blank or saturated (near-constant in the field of view)
  kSameImage = 8,        // both views hold the same (or nearly the same) image
  kConstantDetector = 9, // the detections do not depend on the image (same across frames)
  kAmbiguousMirror = 10, // one view mirrored, the other not, with a small objective gap
};
constexpr int kNumRegistrationStatuses = 11;
// "ok", "too_few_landmarks", "failed", "one_view", "views_disagree", "large_residual",
// "few_inliers", "blank_view", "same_image", "constant_detector", "ambiguous_mirror".
const char* RegistrationStatusName(RegistrationStatus status);
// True for the statuses with a pose (kOk, kOneView).
inline bool IsRegistered(RegistrationStatus status) {
  return status == RegistrationStatus::kOk || status == RegistrationStatus::kOneView;
}

// What stays fixed over a recording: the subject's landmarks, the two views, the pairs.
// Pointers are borrowed (the caller keeps them alive during the call).
struct RegistrationSetup {
  const double* landmarks = nullptr;  // [num_landmarks, 3] mm, model frame
  int num_landmarks = 0;
  ConeView views[2];                  // view 1, view 2 (world frame)
  const int32_t* pairs = nullptr;     // [num_pairs, 2] landmark indices of symmetric pairs
  int num_pairs = 0;
};

struct RegistrationOptions {
  ObjectiveMode mode = ObjectiveMode::kLeastSquares;
  RobustLoss loss = RobustLoss::kNone;  // only with kLeastSquares
  double loss_scale_mm = 1.0;           // a of the robust loss, mm (> 0)
  bool mirror = true;                   // the four-case strategy (needs pairs)
  int min_visible = 4;                  // minimum n_vis (>= 4)
  int max_iterations = 100;             // per solve
  // Screening of the mirror cases (speed): every case first gets screen_iterations
  // iterations of a small Levenberg-Marquardt (the same cost, robust losses reweighted);
  // only the cases whose objective is then within screen_ratio times the best one are
  // solved further (the others, far worse, are reported in case_objective with their
  // objective at that point): the small LM goes on to convergence (within max_iterations;
  // Ceres' convergence criteria), and Ceres solves from where it stopped a case it did not
  // bring there. 0 = a Ceres solve of every case from the start.
  int screen_iterations = 4;
  double screen_ratio = 4.0;
  double function_tolerance = 1e-10;    // Ceres tolerances
  double gradient_tolerance = 1e-14;
  double parameter_tolerance = 1e-10;
  int num_threads = 0;                  // batch calls: 0 = all hardware threads
  InitMode init = InitMode::kPaper;     // RegisterBatch (RegisterFrames: from init_poses)
  // The views' agreement (CheckViewAgreement). The typical residual of view k is the median
  // rms_mm[k] over the registered frames (at least view_min_frames of them, else nothing is
  // checked). A registered frame is suspect when one view's residual exceeds
  // view_outlier_ratio times its typical one, or both views' exceed view_joint_ratio times
  // theirs. It is then solved from each view alone (the other view's weights times
  // kLeftOutWeight). If the better view's own residual is at most view_fit_ratio times its
  // typical one and at most half the other view's own residual, the frame is solved again
  // with both views from that pose and becomes kOneView (the refined pose when it still fits
  // the better view within view_fit_ratio, else the one-view pose); otherwise kViewsDisagree.
  double view_outlier_ratio = 0.0;  // 0 = no check; else > 1
  double view_joint_ratio = 2.5;    // in (1, view_outlier_ratio]
  double view_fit_ratio = 1.5;      // in (0, view_joint_ratio)
  int view_min_frames = 5;          // >= 1
  // The quality gate (ApplyQualityGate), absolute and per view, before the view check: the
  // residual of landmark i in view k at the bone, e_ki, is its intensifier-plane residual divided
  // by the view's magnification at that landmark, M = (n . (D - S)) / (n . (X_i - S)) (source
  // to intensifier over source to landmark along the view axis). The view's inliers are its
  // landmarks with e_ki <= kInlierFactor * max_residual_mm (the others: the robust loss's
  // outliers, a wrong detection each), its residual rms_bone_mm their RMS. A frame with a pose
  // fails when a view's rms_bone_mm exceeds max_residual_mm (kLargeResidual; a view without
  // inliers too) or when a view has fewer than max(min_inliers_per_view,
  // ceil(min_inlier_fraction * n_vis)) inliers (kFewInliers). 0 = no gate.
  double max_residual_mm = 5.0;     // mm at the bone; 0 = off, else > 0 (the measurement:
                                    // python/fluororeg/pipeline/quality.py)
  int min_inliers_per_view = 4;     // >= 1
  double min_inlier_fraction = 0.5; // in [0, 1]
};

// A view left out of a one-view solve keeps this share of its weights: the landmark set
// (detected in both views) stays the same, the view's pull on the pose becomes negligible.
constexpr double kLeftOutWeight = 1e-6;
// A one-view solve explains the frame only when the other view's own residual is at least
// this many times the better view's.
constexpr double kOtherViewFactor = 2.0;
// A landmark is an inlier of the quality gate within this many times max_residual_mm.
constexpr double kInlierFactor = 2.0;

struct RegistrationResult {
  RegistrationStatus status = RegistrationStatus::kFailed;
  double pose[6];           // rad, mm (NaN unless IsRegistered(status))
  double matrix[16];        // world_from_model 4x4, row-major (NaN unless registered)
  double objective;         // final objective of the winning case (see above)
  double rms_mm[2];         // RMS reprojection error per view, mm on the intensifier (unweighted)
  double rms_px[2];         // the same in pixels
  int n_vis = 0;            // landmarks used by the winning case (max over cases otherwise)
  int mirror_case = -1;     // 0..3, f1 + 2 * f2 (see above); -1 when no case was solved
  int iterations = 0;       // iterations of the winning case: the small LM's steps, then Ceres'
  bool converged = false;   // Ceres reported CONVERGENCE for the winning solve
  double case_objective[4];  // objective per mirror case (NaN: not solved)
  double rms_bone_mm[2];     // RMS residual per view at the bone over its inliers, mm (NaN
                             // without a pose or inliers)
  int inliers[2] = {0, 0};   // landmarks per view within kInlierFactor * max_residual_mm at
                             // the bone (all n_vis when the gate is off)
};

// The quality gate on one result: a frame with status kOk or kOneView that fails the
// absolute limits of `options` (see max_residual_mm) becomes kLargeResidual or kFewInliers
// (pose kept). Does nothing when options.max_residual_mm is 0.
void ApplyQualityGate(const RegistrationOptions& options, RegistrationResult* result);

// Names of the option values as the Python API and the files spell them, and back
// (Parse* throw std::invalid_argument naming the unknown value).
const char* ObjectiveModeName(ObjectiveMode mode);  // "least_squares", "frobenius"
const char* RobustLossName(RobustLoss loss);        // "none", "huber", "cauchy"
const char* InitModeName(InitMode init);            // "paper", "given", "previous"
ObjectiveMode ParseObjectiveMode(const std::string& name);
RobustLoss ParseRobustLoss(const std::string& name);
InitMode ParseInitMode(const std::string& name);

// Throw std::invalid_argument naming the offending value.
//   pairs [num_pairs, 2] landmark indices: each in [0, num_landmarks), no landmark paired
//   with itself or in two pairs. landmark_names [num_landmarks] or nullptr: messages name
//   landmarks by name instead of index. The one check of symmetric pairs (Python's subject
//   and registration modules call it).
void ValidatePairs(const int32_t* pairs, int num_pairs, int num_landmarks,
                   const std::vector<std::string>* landmark_names = nullptr);
void ValidateRegistrationSetup(const RegistrationSetup& setup);
void ValidateRegistrationOptions(const RegistrationOptions& options);
//   detections [2, N, 2] px (NaN pair = not detected); weights [2, N] or nullptr (>= 0);
//   init_pose [6] rad, mm, six NaN (no start: the paper's) or nullptr.
void ValidateFrameInput(const RegistrationSetup& setup, const double* detections,
                        const double* weights, const double* init_pose, int frame_index);
// True when a given start [6] is six NaN: the frame starts from the paper's start.
bool NoStart(const double* init_pose);

// Registers one frame (validates its input first).
//   detections [2, N, 2] px, NaN = not detected
//   weights    [2, N] or nullptr (all 1)
//   init_pose  [6] rad, mm or nullptr: theta = 0, tau = SystemCentre (the paper's)
// options.init and the view check do not apply to a single frame.
RegistrationResult RegisterFrame(const RegistrationSetup& setup, const double* detections,
                                 const double* weights, const double* init_pose,
                                 const RegistrationOptions& options = {});

// The whole registration of a recording's batch: the first solve of every frame (from the
// start options.init names; in parallel over options.num_threads threads, except kPrevious,
// which is sequential), then CheckViewAgreement when options.view_outlier_ratio > 0.
//   detections [F, 2, N, 2] px;  weights [F, 2, N] or nullptr (all 1);
//   init_poses [F, 6] rad, mm: required with InitMode::kGiven (NaN rows: the paper's start),
//   nullptr otherwise;  out [F]
void RegisterBatch(const RegistrationSetup& setup, const double* detections,
                   const double* weights, const double* init_poses, int num_frames,
                   const RegistrationOptions& options, RegistrationResult* out);

// The view-agreement check alone on results of a batch `results` [F] (in and out; e.g. from
// RegisterBatch without the check). Does nothing when options.view_outlier_ratio is 0.
void CheckViewAgreement(const RegistrationSetup& setup, const double* detections,
                        const double* weights, int num_frames,
                        const RegistrationOptions& options, RegistrationResult* results);

// Starts for Eq. 2 that assume nothing about the model's axes: per frame, the rigid pose that
// best maps the model landmarks onto those triangulated from both views' detections (the
// midpoint of the shortest segment between the two source rays; least squares, Kabsch).
// With mirror (the left/right permutation of the landmarks) the four labellings of Table 1's
// cases are triangulated and the fit with the lowest RMS kept (a detector that swaps left and
// right in one view makes rays that miss each other). Six NaN where fewer than min_points
// landmarks are seen in both views.
//   landmarks [N, 3] mm; detections [F, 2, N, 2] px (NaN: not seen; distortion already
//   corrected); mirror [N] or nullptr; poses [F, 6] rad, mm (out); num_threads: 0 = all.
void TriangulatedPoses(const double* landmarks, int num_landmarks, const ConeView views[2],
                       const double* detections, int num_frames, const int32_t* mirror,
                       int min_points, int num_threads, double* poses);

// RegisterBatch with the start taken from init_poses (kGiven when given, else kPaper).
void RegisterFrames(const RegistrationSetup& setup, const double* detections,
                    const double* weights, const double* init_poses, int num_frames,
                    RegistrationResult* out, const RegistrationOptions& options = {});

}  // namespace fluororeg
