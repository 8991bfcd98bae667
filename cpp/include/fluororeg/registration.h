// Point-based 3D-to-2D registration of a rigid model to dual-fluoroscope frames (the paper's
// Eq. 2 and Table 1), solved by Ceres with analytic Jacobians.
//
// Conventions (DESIGN.md): millimetres; radians in this C++ API (the Python layer speaks
// degrees). A pose is (theta_x, theta_y, theta_z rad, tau_x, tau_y, tau_z mm), extrinsic z-y-x
// Euler angles, R = Rx(theta_x) Ry(theta_y) Rz(theta_z), X_world = R X_model + tau. Image
// coordinates: x = column, y = row, origin at the centre of the top-left pixel.
//
// Residual of landmark i in view k (k = 0: F1, k = 1: F2), on that view's intensifier plane:
//   e_ki = sqrt(w_ki) * (P_k(R X_i + tau) - U_ki)   [2] mm along the detector axes (u, v),
// P_k = ProjectToDetectorMm, U_ki = the detection converted from pixels to mm relative to D,
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
// every symmetric pair (i, j) are swapped in F1 (F2) (detections and weights move together);
// the case with the lowest objective wins. n_vis may differ between cases when a pair is
// only half detected.
#pragma once

#include <cstdint>

#include "fluororeg/geometry.h"

namespace fluororeg {

enum class ObjectiveMode { kLeastSquares = 0, kFrobenius = 1 };
enum class RobustLoss { kNone = 0, kHuber = 1, kCauchy = 2 };

enum class RegistrationStatus {
  kOk = 0,               // solved; pose valid (see `converged` for the solver's verdict)
  kTooFewLandmarks = 1,  // fewer than min_visible landmarks in every mirror case; pose NaN
  kFailed = 2,           // the solver could not evaluate the objective (e.g. the model
                         // behind a source at the initial pose) in every case; pose NaN
};
// "ok", "too_few_landmarks", "failed".
const char* RegistrationStatusName(RegistrationStatus status);

// What stays fixed over a recording: the subject's landmarks, the two views, the pairs.
// Pointers are borrowed (the caller keeps them alive during the call).
struct RegistrationSetup {
  const double* landmarks = nullptr;  // [num_landmarks, 3] mm, model frame
  int num_landmarks = 0;
  ConeView views[2];                  // F1, F2 (world frame)
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
  // iterations; the cases that have not converged by then are finished only when their
  // objective is within screen_ratio times the best one so far (the others, far worse, are
  // reported with their objective at that point). 0 = finish every case.
  int screen_iterations = 4;
  double screen_ratio = 4.0;
  double function_tolerance = 1e-10;    // Ceres tolerances
  double gradient_tolerance = 1e-14;
  double parameter_tolerance = 1e-10;
  int num_threads = 0;                  // RegisterFrames: 0 = all hardware threads
};

struct RegistrationResult {
  RegistrationStatus status = RegistrationStatus::kFailed;
  double pose[6];           // rad, mm (NaN unless status == kOk)
  double matrix[16];        // world_from_model 4x4, row-major (NaN unless kOk)
  double objective;         // final objective of the winning case (see above)
  double rms_mm[2];         // RMS reprojection error per view, mm on the detector (unweighted)
  double rms_px[2];         // the same in pixels
  int n_vis = 0;            // landmarks used by the winning case (max over cases otherwise)
  int mirror_case = -1;     // 0..3, f1 + 2 * f2 (see above); -1 when no case was solved
  int iterations = 0;       // Ceres iterations of the winning solve
  bool converged = false;   // Ceres reported CONVERGENCE for the winning solve
  double case_objective[4];  // objective per mirror case (NaN: not solved)
};

// Throw std::invalid_argument naming the offending value.
void ValidateRegistrationSetup(const RegistrationSetup& setup);
void ValidateRegistrationOptions(const RegistrationOptions& options);
//   detections [2, N, 2] px (NaN pair = not detected); weights [2, N] or nullptr (>= 0);
//   init_pose [6] rad, mm or nullptr.
void ValidateFrameInput(const RegistrationSetup& setup, const double* detections,
                        const double* weights, const double* init_pose, int frame_index);

// The paper's initial translation: mean of both sources and both detector centres [3] mm.
void SystemCentre(const ConeView views[2], double* centre);

// Registers one frame (validates its input first).
//   detections [2, N, 2] px, NaN = not detected
//   weights    [2, N] or nullptr (all 1)
//   init_pose  [6] rad, mm or nullptr: theta = 0, tau = SystemCentre (the paper's)
RegistrationResult RegisterFrame(const RegistrationSetup& setup, const double* detections,
                                 const double* weights, const double* init_pose,
                                 const RegistrationOptions& options = {});

// All frames of a recording, spread over options.num_threads threads.
//   detections [F, 2, N, 2] px;  weights [F, 2, N] or nullptr;  init_poses [F, 6] or nullptr
//   out [F]
void RegisterFrames(const RegistrationSetup& setup, const double* detections,
                    const double* weights, const double* init_poses, int num_frames,
                    RegistrationResult* out, const RegistrationOptions& options = {});

// Pose (rad, mm) -> 4x4 row-major matrix; rotation matrix [9] row-major -> Euler angles [3]
// rad (theta_y in [-pi/2, pi/2]).
void PoseToMatrix(const double* pose, double* matrix16);
void EulerFromRotation(const double* R9, double* theta);

}  // namespace fluororeg
