// Checks of the registration's input: the setup (landmarks, views, pairs), the options and
// each frame's detections, weights and start. Every failure names the value.
#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/format.h"
#include "fluororeg/registration.h"
#include "fluororeg/render.h"

namespace fluororeg {

namespace {

using internal::Fmt;

}  // namespace

void ValidatePairs(const int32_t* pairs, int num_pairs, int n,
                   const std::vector<std::string>* names) {
  if (num_pairs < 0 || (num_pairs > 0 && pairs == nullptr)) {
    throw std::invalid_argument("pair count " + std::to_string(num_pairs) + " is invalid");
  }
  if (names != nullptr && static_cast<int>(names->size()) != n) {
    throw std::invalid_argument("got " + std::to_string(names->size()) + " landmark names for " +
                                std::to_string(n) + " landmarks");
  }
  auto label = [&](int idx) {
    return names != nullptr ? "'" + (*names)[idx] + "'" : std::to_string(idx);
  };
  std::vector<int> used(std::max(n, 0), -1);
  for (int p = 0; p < num_pairs; ++p) {
    const int a = pairs[2 * p], b = pairs[2 * p + 1];
    for (int idx : {a, b}) {
      if (idx < 0 || idx >= n) {
        throw std::invalid_argument(
            "pair " + std::to_string(p) + " (" + std::to_string(a) + ", " + std::to_string(b) +
            ") names landmark " + std::to_string(idx) + ", a missing landmark (index " +
            std::to_string(idx) + " out of range: expected indices in [0, " + std::to_string(n) +
            "))");
      }
    }
    const std::string where =
        "pair " + std::to_string(p) + " (" + label(a) + ", " + label(b) + ")";
    if (a == b) throw std::invalid_argument(where + " pairs landmark " + label(a) + " with itself");
    for (int idx : {a, b}) {
      if (used[idx] >= 0) {
        throw std::invalid_argument(where + ": landmark " + label(idx) +
                                    " is in two pairs (already in pair " +
                                    std::to_string(used[idx]) + ")");
      }
      used[idx] = p;
    }
  }
}

void ValidateRegistrationSetup(const RegistrationSetup& setup) {
  const int n = setup.num_landmarks;
  if (n < 1 || setup.landmarks == nullptr) {
    throw std::invalid_argument("landmark count " + std::to_string(n) +
                                ": expected at least one 3D landmark");
  }
  for (int i = 0; i < 3 * n; ++i) {
    if (!std::isfinite(setup.landmarks[i])) {
      throw std::invalid_argument("landmark " + std::to_string(i / 3) +
                                  " holds a non-finite coordinate " + Fmt(setup.landmarks[i]));
    }
  }
  for (int k = 0; k < 2; ++k) ValidateConeView(setup.views[k], k);
  // The two principal rays must not be (nearly) parallel, or depth is lost.
  double dir[2][3];
  for (int k = 0; k < 2; ++k) {
    double len = 0;
    for (int i = 0; i < 3; ++i) {
      dir[k][i] = setup.views[k].intensifier_centre[i] - setup.views[k].source[i];
      len += dir[k][i] * dir[k][i];
    }
    len = std::sqrt(len);
    if (!(len > 1e-6)) {
      throw std::invalid_argument("view " + std::to_string(k) +
                                  ": the source coincides with the intensifier centre");
    }
    for (int i = 0; i < 3; ++i) dir[k][i] /= len;
  }
  const double c =
      std::fabs(dir[0][0] * dir[1][0] + dir[0][1] * dir[1][1] + dir[0][2] * dir[1][2]);
  const double angle_deg = std::acos(std::min(1.0, c)) * 180.0 / M_PI;
  if (angle_deg < 1.0) {
    throw std::invalid_argument(
        "the two views are nearly parallel (principal rays " + Fmt(angle_deg) +
        " degrees apart): expected distinct viewing directions for dual-fluoroscope "
        "registration");
  }
  ValidatePairs(setup.pairs, setup.num_pairs, n);
}

const char* ObjectiveModeName(ObjectiveMode mode) {
  switch (mode) {
    case ObjectiveMode::kLeastSquares:
      return "least_squares";
    case ObjectiveMode::kFrobenius:
      return "frobenius";
  }
  return "unknown";
}

const char* RobustLossName(RobustLoss loss) {
  switch (loss) {
    case RobustLoss::kNone:
      return "none";
    case RobustLoss::kHuber:
      return "huber";
    case RobustLoss::kCauchy:
      return "cauchy";
  }
  return "unknown";
}

const char* InitModeName(InitMode init) {
  switch (init) {
    case InitMode::kPaper:
      return "paper";
    case InitMode::kGiven:
      return "given";
    case InitMode::kPrevious:
      return "previous";
  }
  return "unknown";
}

ObjectiveMode ParseObjectiveMode(const std::string& name) {
  if (name == "least_squares") return ObjectiveMode::kLeastSquares;
  if (name == "frobenius") return ObjectiveMode::kFrobenius;
  throw std::invalid_argument("mode '" + name +
                              "' is unknown: expected 'least_squares' or 'frobenius'");
}

RobustLoss ParseRobustLoss(const std::string& name) {
  if (name == "none") return RobustLoss::kNone;
  if (name == "huber") return RobustLoss::kHuber;
  if (name == "cauchy") return RobustLoss::kCauchy;
  throw std::invalid_argument("loss '" + name +
                              "' is unknown: expected 'none' (None), 'huber' or 'cauchy'");
}

InitMode ParseInitMode(const std::string& name) {
  if (name == "paper") return InitMode::kPaper;
  if (name == "given") return InitMode::kGiven;
  if (name == "previous") return InitMode::kPrevious;
  throw std::invalid_argument("init '" + name +
                              "' is unknown: expected 'paper', 'given' or 'previous'");
}

void ValidateRegistrationOptions(const RegistrationOptions& o) {
  if (o.mode != ObjectiveMode::kLeastSquares && o.mode != ObjectiveMode::kFrobenius) {
    throw std::invalid_argument("unknown objective mode " + std::to_string(int(o.mode)));
  }
  if (o.loss != RobustLoss::kNone && o.loss != RobustLoss::kHuber &&
      o.loss != RobustLoss::kCauchy) {
    throw std::invalid_argument("unknown robust loss " + std::to_string(int(o.loss)));
  }
  if (o.mode == ObjectiveMode::kFrobenius && o.loss != RobustLoss::kNone) {
    throw std::invalid_argument(std::string("loss '") + RobustLossName(o.loss) +
                                "' acts per landmark and is only available with "
                                "mode='least_squares', not with the Frobenius objective (Eq. 2)");
  }
  if (!(o.loss_scale_mm > 0) || !std::isfinite(o.loss_scale_mm)) {
    throw std::invalid_argument("loss_scale_mm = " + Fmt(o.loss_scale_mm) +
                                ": expected a finite positive scale in mm");
  }
  if (o.min_visible < 4) {
    throw std::invalid_argument("min_visible = " + std::to_string(o.min_visible) +
                                ": expected at least 4 (landmarks in both fields of view)");
  }
  if (o.max_iterations < 1) {
    throw std::invalid_argument("max_iterations = " + std::to_string(o.max_iterations) +
                                ": expected at least 1");
  }
  if (o.screen_iterations < 0) {
    throw std::invalid_argument("screen_iterations = " + std::to_string(o.screen_iterations) +
                                ": expected at least 0 (0 = finish every mirror case)");
  }
  if (!(o.screen_ratio >= 1) || !std::isfinite(o.screen_ratio)) {
    throw std::invalid_argument("screen_ratio = " + Fmt(o.screen_ratio) +
                                ": expected a finite number >= 1");
  }
  for (double tol : {o.function_tolerance, o.gradient_tolerance, o.parameter_tolerance}) {
    if (!(tol >= 0) || !std::isfinite(tol)) {
      throw std::invalid_argument("solver tolerance " + Fmt(tol) + " must be finite and >= 0");
    }
  }
  if (o.num_threads < 0) {
    throw std::invalid_argument("num_threads = " + std::to_string(o.num_threads) +
                                ": expected at least 0 (0 = all hardware threads)");
  }
  if (o.init != InitMode::kPaper && o.init != InitMode::kGiven && o.init != InitMode::kPrevious) {
    throw std::invalid_argument("unknown init mode " + std::to_string(int(o.init)));
  }
  if (o.view_outlier_ratio != 0.0) {
    if (!(std::isfinite(o.view_outlier_ratio) && o.view_outlier_ratio > 1)) {
      throw std::invalid_argument("view_outlier_ratio = " + Fmt(o.view_outlier_ratio) +
                                  ": expected a number > 1 (0 = no view check)");
    }
    if (!(std::isfinite(o.view_joint_ratio) && o.view_joint_ratio > 1 &&
          o.view_joint_ratio <= o.view_outlier_ratio)) {
      throw std::invalid_argument("view_joint_ratio = " + Fmt(o.view_joint_ratio) +
                                  ": expected a number in (1, view_outlier_ratio = " +
                                  Fmt(o.view_outlier_ratio) + "]");
    }
    if (!(std::isfinite(o.view_fit_ratio) && o.view_fit_ratio > 0 &&
          o.view_fit_ratio < o.view_joint_ratio)) {
      throw std::invalid_argument("view_fit_ratio = " + Fmt(o.view_fit_ratio) +
                                  ": expected a number in (0, view_joint_ratio = " +
                                  Fmt(o.view_joint_ratio) + ")");
    }
    if (o.view_min_frames < 1) {
      throw std::invalid_argument("view_min_frames " + std::to_string(o.view_min_frames) +
                                  " must be at least 1");
    }
  }
  if (!(std::isfinite(o.max_residual_mm) && o.max_residual_mm >= 0)) {
    throw std::invalid_argument("max_residual_mm = " + Fmt(o.max_residual_mm) +
                                ": expected a number of mm at the bone > 0 (0 = no gate)");
  }
  if (o.min_inliers_per_view < 1) {
    throw std::invalid_argument("min_inliers_per_view " + std::to_string(o.min_inliers_per_view) +
                                " must be at least 1");
  }
  if (!(o.min_inlier_fraction >= 0 && o.min_inlier_fraction <= 1)) {
    throw std::invalid_argument("min_inlier_fraction = " + Fmt(o.min_inlier_fraction) +
                                ": expected a number in [0, 1]");
  }
}

bool NoStart(const double* init_pose) {
  for (int i = 0; i < 6; ++i)
    if (!std::isnan(init_pose[i])) return false;
  return true;
}

void ValidateFrameInput(const RegistrationSetup& setup, const double* detections,
                        const double* weights, const double* init_pose, int frame) {
  const int n = setup.num_landmarks;
  const std::string where = "frame " + std::to_string(frame);
  if (detections == nullptr) throw std::invalid_argument(where + ": detections are missing");
  for (int k = 0; k < 2; ++k) {
    for (int i = 0; i < n; ++i) {
      const double x = detections[(k * n + i) * 2], y = detections[(k * n + i) * 2 + 1];
      const bool nx = std::isnan(x), ny = std::isnan(y);
      if (nx && ny) continue;
      if (nx != ny || !std::isfinite(x) || !std::isfinite(y)) {
        throw std::invalid_argument(where + ", view " + std::to_string(k) + ", landmark " +
                                    std::to_string(i) + ": detection (" + Fmt(x) + ", " +
                                    Fmt(y) +
                                    ") px is invalid: expected two finite coordinates, or "
                                    "NaN for both when not detected");
      }
    }
  }
  if (weights != nullptr) {
    for (int i = 0; i < 2 * n; ++i) {
      if (!(weights[i] >= 0) || !std::isfinite(weights[i])) {
        throw std::invalid_argument(where + ", view " + std::to_string(i / n) + ", landmark " +
                                    std::to_string(i % n) + ": weight " + Fmt(weights[i]) +
                                    " must be finite and >= 0");
      }
    }
  }
  if (init_pose != nullptr && !NoStart(init_pose)) {
    for (int i = 0; i < 6; ++i) {
      if (!std::isfinite(init_pose[i])) {
        throw std::invalid_argument(where + ": initial pose holds a non-finite value " +
                                    Fmt(init_pose[i]) +
                                    " (a row of six NaN starts from the paper's start)");
      }
    }
  }
}

}  // namespace fluororeg
