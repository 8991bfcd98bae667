// The registration of a batch of frames: the first solve of every frame (paper's, given or
// previous frame's start), then the check of the two views' agreement.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "fluororeg/parallel.h"
#include "fluororeg/registration.h"
#include "frame_solver.h"

namespace fluororeg {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Median of the values (the mean of the two middle ones for an even count, like NumPy);
// NaN when any value is NaN.
double Median(std::vector<double> values) {
  for (double v : values)
    if (std::isnan(v)) return kNaN;
  const size_t m = values.size() / 2;
  std::nth_element(values.begin(), values.begin() + m, values.end());
  const double upper = values[m];
  if (values.size() % 2 == 1) return upper;
  const double lower = *std::max_element(values.begin(), values.begin() + m);
  return (lower + upper) / 2.0;
}

void ValidateBatch(const RegistrationSetup& setup, const double* detections,
                   const double* weights, const double* init_poses, int num_frames,
                   const RegistrationOptions& options) {
  ValidateRegistrationSetup(setup);
  ValidateRegistrationOptions(options);
  if (num_frames < 0) {
    throw std::invalid_argument("frame count " + std::to_string(num_frames) + " is negative");
  }
  const int n = setup.num_landmarks;
  for (int f = 0; f < num_frames; ++f) {
    ValidateFrameInput(setup, detections + 4LL * n * f,
                       weights != nullptr ? weights + 2LL * n * f : nullptr,
                       init_poses != nullptr ? init_poses + 6LL * f : nullptr, f);
  }
}

// CheckViewAgreement on validated input.
bool IsGated(RegistrationStatus s) {
  return s == RegistrationStatus::kLargeResidual || s == RegistrationStatus::kFewInliers;
}

void ResolveViews(const RegistrationSetup& setup, const ConeProjector g[2],
                  const double* detections, const double* weights, int num_frames,
                  const RegistrationOptions& o, RegistrationResult* results) {
  if (o.view_outlier_ratio == 0.0) return;
  const int n = setup.num_landmarks;
  std::vector<double> rms[2];
  for (int f = 0; f < num_frames; ++f) {
    if (!IsRegistered(results[f].status)) continue;
    for (int k = 0; k < 2; ++k) rms[k].push_back(results[f].rms_mm[k]);
  }
  if (static_cast<int>(rms[0].size()) < std::max(1, o.view_min_frames)) return;
  double typical[2];  // mm; at least 1 um (exact detections)
  for (int k = 0; k < 2; ++k) {
    const double m = Median(rms[k]);
    typical[k] = std::isnan(m) ? kNaN : std::max(m, 1e-3);
  }
  std::vector<int> suspect;
  for (int f = 0; f < num_frames; ++f) {
    if (IsGated(results[f].status)) {  // failed the absolute gate: maybe one view fits alone
      suspect.push_back(f);
      continue;
    }
    if (!IsRegistered(results[f].status)) continue;
    const double r0 = results[f].rms_mm[0] / typical[0], r1 = results[f].rms_mm[1] / typical[1];
    const double worst = std::fmax(r0, r1), least = std::fmin(r0, r1);  // a NaN view is ignored
    if (worst > o.view_outlier_ratio || least > o.view_joint_ratio) suspect.push_back(f);
  }
  ParallelFor(static_cast<long long>(suspect.size()), o.num_threads, [&](long long j) {
    const int f = suspect[j];
    const double* det = detections + 4LL * n * f;
    std::vector<double> w(2 * n), w_alone(2 * n);  // [2, N]
    for (int i = 0; i < 2 * n; ++i)
      w[i] = weights != nullptr ? weights[2LL * n * f + i] : (std::isnan(det[2 * i]) ? 0.0 : 1.0);
    RegistrationResult alone[2];
    double own[2];  // each view's own residual in its one-view solve / typical
    for (int k = 0; k < 2; ++k) {
      std::copy(w.begin(), w.end(), w_alone.begin());
      for (int i = 0; i < n; ++i) w_alone[(1 - k) * n + i] *= kLeftOutWeight;
      alone[k] = internal::SolveFrame(setup, g, det, w_alone.data(), nullptr, o);
      own[k] = IsRegistered(alone[k].status) ? alone[k].rms_mm[k] / typical[k]
                                             : std::numeric_limits<double>::infinity();
    }
    const int best = own[1] < own[0] ? 1 : 0;
    const bool resolved = own[best] <= o.view_fit_ratio &&
                          own[1 - best] >= kOtherViewFactor * own[best];
    if (!resolved && IsGated(results[f].status)) return;  // stays gated, its pose on record
    if (!resolved) {  // the two-view numbers stay on record, the pose does not
      RegistrationResult& r = results[f];
      r.status = RegistrationStatus::kViewsDisagree;
      std::fill(r.pose, r.pose + 6, kNaN);
      std::fill(r.matrix, r.matrix + 16, kNaN);
      return;
    }
    const RegistrationResult refined =
        internal::SolveFrame(setup, g, det, w.data(), alone[best].pose, o);
    const bool keep_refined = IsRegistered(refined.status) &&
                              refined.rms_mm[best] / typical[best] <= o.view_fit_ratio;
    RegistrationResult resolved_result = keep_refined ? refined : alone[best];
    resolved_result.status = RegistrationStatus::kOneView;
    // The one-view pose must pass the absolute gate in both views too; a gated frame keeps
    // its own solve when it does not.
    ApplyQualityGate(o, &resolved_result);
    if (IsRegistered(resolved_result.status) || !IsGated(results[f].status))
      results[f] = resolved_result;
  });
}

}  // namespace

const char* RegistrationStatusName(RegistrationStatus status) {
  switch (status) {
    case RegistrationStatus::kOk:
      return "ok";
    case RegistrationStatus::kTooFewLandmarks:
      return "too_few_landmarks";
    case RegistrationStatus::kFailed:
      return "failed";
    case RegistrationStatus::kOneView:
      return "one_view";
    case RegistrationStatus::kViewsDisagree:
      return "views_disagree";
    case RegistrationStatus::kLargeResidual:
      return "large_residual";
    case RegistrationStatus::kFewInliers:
      return "few_inliers";
    case RegistrationStatus::kBlankView:
      return "blank_view";
    case RegistrationStatus::kSameImage:
      return "same_image";
    case RegistrationStatus::kConstantDetector:
      return "constant_detector";
    case RegistrationStatus::kAmbiguousMirror:
      return "ambiguous_mirror";
  }
  return "unknown";
}

void ApplyQualityGate(const RegistrationOptions& o, RegistrationResult* r) {
  if (o.max_residual_mm == 0.0 || !IsRegistered(r->status)) return;
  const int needed = std::max(
      o.min_inliers_per_view, static_cast<int>(std::ceil(o.min_inlier_fraction * r->n_vis - 1e-9)));
  bool large = false, few = false;
  for (int k = 0; k < 2; ++k) {
    // A NaN residual (no landmark, cannot happen with a pose) fails too.
    if (!(r->rms_bone_mm[k] <= o.max_residual_mm)) large = true;
    if (r->inliers[k] < needed) few = true;
  }
  if (large) {
    r->status = RegistrationStatus::kLargeResidual;
  } else if (few) {
    r->status = RegistrationStatus::kFewInliers;
  }
}

RegistrationResult RegisterFrame(const RegistrationSetup& setup, const double* detections,
                                 const double* weights, const double* init_pose,
                                 const RegistrationOptions& options) {
  RegistrationOptions single = options;
  single.init = init_pose != nullptr ? InitMode::kGiven : InitMode::kPaper;
  single.view_outlier_ratio = 0.0;
  single.num_threads = 1;
  RegistrationResult r;
  RegisterBatch(setup, detections, weights, init_pose, 1, single, &r);
  return r;
}

void RegisterBatch(const RegistrationSetup& setup, const double* detections,
                   const double* weights, const double* init_poses, int num_frames,
                   const RegistrationOptions& o, RegistrationResult* out) {
  ValidateBatch(setup, detections, weights, init_poses, num_frames, o);
  if (o.init == InitMode::kGiven && init_poses == nullptr && num_frames > 0) {
    throw std::invalid_argument("init mode 'given' needs init_poses [F, 6]; none were given");
  }
  if (o.init != InitMode::kGiven && init_poses != nullptr) {
    throw std::invalid_argument(std::string("init_poses were given but the init mode is '") +
                                InitModeName(o.init) +
                                "': expected init mode 'given'");
  }
  const int n = setup.num_landmarks;
  const ConeProjector g[2] = {ConeProjector(setup.views[0]), ConeProjector(setup.views[1])};
  auto frame_weights = [&](long long f) {
    return weights != nullptr ? weights + 2LL * n * f : nullptr;
  };
  if (o.init == InitMode::kPrevious) {
    // Sequential: each frame starts from the last registered pose; a failed start falls
    // back to the paper's.
    double previous[6];
    bool have_previous = false;
    for (int f = 0; f < num_frames; ++f) {
      const double* det = detections + 4LL * n * f;
      RegistrationResult r =
          internal::SolveFrame(setup, g, det, frame_weights(f), have_previous ? previous : nullptr, o);
      ApplyQualityGate(o, &r);
      if (!IsRegistered(r.status) && have_previous) {
        RegistrationResult fresh = internal::SolveFrame(setup, g, det, frame_weights(f), nullptr, o);
        ApplyQualityGate(o, &fresh);
        // The fresh start replaces a failed solve, or a gated one when it passes the gate.
        if (IsRegistered(fresh.status) || !std::isfinite(r.pose[0])) r = fresh;
      }
      if (IsRegistered(r.status)) {
        std::copy(r.pose, r.pose + 6, previous);
        have_previous = true;
      }
      out[f] = r;
    }
  } else {
    ParallelFor(num_frames, o.num_threads, [&](long long f) {
      const double* start = init_poses != nullptr ? init_poses + 6LL * f : nullptr;
      if (start != nullptr && NoStart(start)) start = nullptr;  // the paper's start
      out[f] = internal::SolveFrame(setup, g, detections + 4LL * n * f, frame_weights(f), start, o);
      ApplyQualityGate(o, &out[f]);
    });
  }
  // The absolute gate came first: the view check's typical residuals are those of the frames
  // that passed it; a frame it makes one_view must pass the gate too.
  ResolveViews(setup, g, detections, weights, num_frames, o, out);
}

void CheckViewAgreement(const RegistrationSetup& setup, const double* detections,
                        const double* weights, int num_frames,
                        const RegistrationOptions& options, RegistrationResult* results) {
  ValidateBatch(setup, detections, weights, nullptr, num_frames, options);
  const ConeProjector g[2] = {ConeProjector(setup.views[0]), ConeProjector(setup.views[1])};
  ResolveViews(setup, g, detections, weights, num_frames, options, results);
}

void RegisterFrames(const RegistrationSetup& setup, const double* detections,
                    const double* weights, const double* init_poses, int num_frames,
                    RegistrationResult* out, const RegistrationOptions& options) {
  RegistrationOptions o = options;
  o.init = init_poses != nullptr ? InitMode::kGiven : InitMode::kPaper;
  RegisterBatch(setup, detections, weights, init_poses, num_frames, o, out);
}

}  // namespace fluororeg
