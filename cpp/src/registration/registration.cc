// Point-based 3D-to-2D registration (Eq. 2, Table 1) with Ceres and analytic Jacobians.
#include "fluororeg/registration.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "fluororeg/parallel.h"
#include "fluororeg/render.h"
#include "registration_internal.h"

namespace fluororeg {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string Fmt(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

inline double Dot3(const double* a, const double* b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

}  // namespace

// ---- Solver building blocks ----------------------------------------------------------------
namespace internal {

// M = I + a [w]x + b [w]x^2 (row-major 3x3): the shared form of the SO(3) exponential and of
// its left Jacobian.
static void IdentityPlusSkewTerms(const double* w, double a, double b, double* M) {
  const double x = w[0], y = w[1], z = w[2];
  M[0] = 1.0 - b * (y * y + z * z);
  M[1] = -a * z + b * x * y;
  M[2] = a * y + b * x * z;
  M[3] = a * z + b * x * y;
  M[4] = 1.0 - b * (x * x + z * z);
  M[5] = -a * x + b * y * z;
  M[6] = -a * y + b * x * z;
  M[7] = a * x + b * y * z;
  M[8] = 1.0 - b * (x * x + y * y);
}

void ExpSO3(const double* w, double* R) {
  const double th2 = Dot3(w, w);
  const double th = std::sqrt(th2);
  double a, b;  // R = I + a [w]x + b [w]x^2
  if (th < 1e-6) {
    a = 1.0 - th2 / 6.0;
    b = 0.5 - th2 / 24.0;
  } else {
    a = std::sin(th) / th;
    b = (1.0 - std::cos(th)) / th2;
  }
  IdentityPlusSkewTerms(w, a, b, R);
}

void LogSO3(const double* R, double* w) {
  const double c = std::clamp(0.5 * (R[0] + R[4] + R[8] - 1.0), -1.0, 1.0);
  const double th = std::acos(c);
  const double f = th < 1e-6 ? 0.5 * (1.0 + th * th / 6.0) : 0.5 * th / std::sin(th);
  w[0] = f * (R[7] - R[5]);
  w[1] = f * (R[2] - R[6]);
  w[2] = f * (R[3] - R[1]);
}

void LeftJacobianSO3(const double* w, double* J) {
  const double th2 = Dot3(w, w);
  const double th = std::sqrt(th2);
  double a, b;  // J = I + a [w]x + b [w]x^2
  if (th < 1e-5) {
    a = 0.5 - th2 / 24.0;
    b = 1.0 / 6.0 - th2 / 120.0;
  } else {
    a = (1.0 - std::cos(th)) / th2;
    b = (th - std::sin(th)) / (th2 * th);
  }
  IdentityPlusSkewTerms(w, a, b, J);
}

ViewGeometry::ViewGeometry(const ConeView& view) {
  for (int i = 0; i < 3; ++i) {
    S[i] = view.source[i];
    u[i] = view.u[i];
    v[i] = view.v[i];
  }
  n[0] = u[1] * v[2] - u[2] * v[1];
  n[1] = u[2] * v[0] - u[0] * v[2];
  n[2] = u[0] * v[1] - u[1] * v[0];
  double DS[3], SD[3];
  for (int i = 0; i < 3; ++i) {
    DS[i] = view.detector_centre[i] - S[i];
    SD[i] = -DS[i];
  }
  sd = Dot3(n, DS);
  a_u = Dot3(u, SD);
  a_v = Dot3(v, SD);
}

ViewResidual::ViewResidual(const ViewGeometry* geometry, const double* R0,
                           const double* landmarks, const int* index, const double* targets,
                           const double* sqrt_w, int k) {
  mutable_parameter_block_sizes()->assign(1, 6);
  Reset(geometry, R0, landmarks, index, targets, sqrt_w, k);
}

void ViewResidual::Reset(const ViewGeometry* geometry, const double* R0,
                         const double* landmarks, const int* index, const double* targets,
                         const double* sqrt_w, int k) {
  g_ = geometry;
  R0_ = R0;
  landmarks_ = landmarks;
  index_ = index;
  targets_ = targets;
  sqrt_w_ = sqrt_w;
  k_ = k;
  set_num_residuals(2 * k);
}

bool ViewResidual::Evaluate(double const* const* parameters, double* residuals,
                            double** jacobians) const {
  const double* phi = parameters[0];
  const double* t = phi + 3;
  double E[9], R[9], Jl[9];
  ExpSO3(phi, E);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      R[3 * i + j] = E[3 * i] * R0_[j] + E[3 * i + 1] * R0_[3 + j] + E[3 * i + 2] * R0_[6 + j];
  double* J = (jacobians != nullptr) ? jacobians[0] : nullptr;
  if (J != nullptr) LeftJacobianSO3(phi, Jl);
  const ViewGeometry& g = *g_;
  for (int i = 0; i < k_; ++i) {
    const double* X = landmarks_ + 3 * index_[i];
    const double y[3] = {Dot3(R, X), Dot3(R + 3, X), Dot3(R + 6, X)};  // R X
    double d[3];
    for (int a = 0; a < 3; ++a) d[a] = y[a] + t[a] - g.S[a];
    const double nd = Dot3(g.n, d);
    if (!(nd * g.sd > 0.0)) return false;  // not in front of the source
    const double inv = 1.0 / nd;
    const double qu = Dot3(g.u, d) * inv, qv = Dot3(g.v, d) * inv;
    const double sw = sqrt_w_[i];
    residuals[2 * i] = sw * (g.a_u + g.sd * qu - targets_[2 * i]);
    residuals[2 * i + 1] = sw * (g.a_v + g.sd * qv - targets_[2 * i + 1]);
    if (J != nullptr) {
      // Row gradient w.r.t. the world point: g = sw sd / nd (u - q n); w.r.t. phi:
      // g^T (-[y]x) J_l = (y x g)^T J_l; w.r.t. tau: g^T.
      const double f = sw * g.sd * inv;
      double gu[3], gv[3];
      for (int a = 0; a < 3; ++a) {
        gu[a] = f * (g.u[a] - qu * g.n[a]);
        gv[a] = f * (g.v[a] - qv * g.n[a]);
      }
      const double cu[3] = {y[1] * gu[2] - y[2] * gu[1], y[2] * gu[0] - y[0] * gu[2],
                            y[0] * gu[1] - y[1] * gu[0]};
      const double cv[3] = {y[1] * gv[2] - y[2] * gv[1], y[2] * gv[0] - y[0] * gv[2],
                            y[0] * gv[1] - y[1] * gv[0]};
      double* ju = J + 12 * i;
      double* jv = ju + 6;
      for (int b = 0; b < 3; ++b) {
        ju[b] = cu[0] * Jl[b] + cu[1] * Jl[3 + b] + cu[2] * Jl[6 + b];
        jv[b] = cv[0] * Jl[b] + cv[1] * Jl[3 + b] + cv[2] * Jl[6 + b];
        ju[3 + b] = gu[b];
        jv[3 + b] = gv[b];
      }
    }
  }
  return true;
}

void FrobeniusLoss::Evaluate(double s, double rho[3]) const {
  const double r = std::sqrt(s + eps_ * eps_);
  rho[0] = 2.0 * (r - eps_);
  rho[1] = 1.0 / r;
  rho[2] = -0.5 / (r * r * r);
}

}  // namespace internal

// ---- Public helpers ------------------------------------------------------------------------

const char* RegistrationStatusName(RegistrationStatus status) {
  switch (status) {
    case RegistrationStatus::kOk:
      return "ok";
    case RegistrationStatus::kTooFewLandmarks:
      return "too_few_landmarks";
    case RegistrationStatus::kFailed:
      return "failed";
  }
  return "unknown";
}

void SystemCentre(const ConeView views[2], double* centre) {
  for (int i = 0; i < 3; ++i) {
    centre[i] = 0.25 * (views[0].source[i] + views[1].source[i] + views[0].detector_centre[i] +
                        views[1].detector_centre[i]);
  }
}

void PoseToMatrix(const double* pose, double* M) {
  double R[9];
  RotationFromEulerZYX(pose, R);
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) M[4 * i + j] = R[3 * i + j];
    M[4 * i + 3] = pose[3 + i];
  }
  M[12] = M[13] = M[14] = 0.0;
  M[15] = 1.0;
}

void EulerFromRotation(const double* R, double* theta) {
  theta[1] = std::asin(std::clamp(R[2], -1.0, 1.0));
  theta[0] = std::atan2(-R[5], R[8]);
  theta[2] = std::atan2(-R[1], R[0]);
}

// ---- Validation ----------------------------------------------------------------------------

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
      dir[k][i] = setup.views[k].detector_centre[i] - setup.views[k].source[i];
      len += dir[k][i] * dir[k][i];
    }
    len = std::sqrt(len);
    if (!(len > 1e-6)) {
      throw std::invalid_argument("view " + std::to_string(k) +
                                  ": the source coincides with the detector centre");
    }
    for (int i = 0; i < 3; ++i) dir[k][i] /= len;
  }
  const double c = std::fabs(Dot3(dir[0], dir[1]));
  const double angle_deg = std::acos(std::min(1.0, c)) * 180.0 / M_PI;
  if (angle_deg < 1.0) {
    throw std::invalid_argument(
        "the two views are nearly parallel (principal rays " + Fmt(angle_deg) +
        " degrees apart): expected distinct viewing directions for dual-fluoroscope "
        "registration");
  }
  if (setup.num_pairs < 0 || (setup.num_pairs > 0 && setup.pairs == nullptr)) {
    throw std::invalid_argument("pair count " + std::to_string(setup.num_pairs) + " is invalid");
  }
  std::vector<int> used(n, -1);
  for (int p = 0; p < setup.num_pairs; ++p) {
    const int a = setup.pairs[2 * p], b = setup.pairs[2 * p + 1];
    const std::string where = "pair " + std::to_string(p) + " (" + std::to_string(a) + ", " +
                              std::to_string(b) + ")";
    if (a < 0 || a >= n || b < 0 || b >= n) {
      throw std::invalid_argument(where + " names a missing landmark: expected indices in [0, " +
                                  std::to_string(n) + ")");
    }
    if (a == b) throw std::invalid_argument(where + " pairs a landmark with itself");
    for (int idx : {a, b}) {
      if (used[idx] >= 0) {
        throw std::invalid_argument(where + ": landmark " + std::to_string(idx) +
                                    " is already in pair " + std::to_string(used[idx]));
      }
      used[idx] = p;
    }
  }
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
    throw std::invalid_argument(
        "a robust loss acts per landmark and is only available with the least-squares "
        "objective, not with the Frobenius (Eq. 2) objective");
  }
  if (!(o.loss_scale_mm > 0) || !std::isfinite(o.loss_scale_mm)) {
    throw std::invalid_argument("loss scale " + Fmt(o.loss_scale_mm) +
                                " mm must be finite and positive");
  }
  if (o.min_visible < 4) {
    throw std::invalid_argument("min_visible " + std::to_string(o.min_visible) +
                                " is too small: expected at least 4 landmarks");
  }
  if (o.max_iterations < 1) {
    throw std::invalid_argument("max_iterations " + std::to_string(o.max_iterations) +
                                " must be at least 1");
  }
  if (o.screen_iterations < 0) {
    throw std::invalid_argument("screen_iterations " + std::to_string(o.screen_iterations) +
                                " must be >= 0");
  }
  if (!(o.screen_ratio >= 1) || !std::isfinite(o.screen_ratio)) {
    throw std::invalid_argument("screen_ratio " + Fmt(o.screen_ratio) + " must be finite and >= 1");
  }
  for (double tol : {o.function_tolerance, o.gradient_tolerance, o.parameter_tolerance}) {
    if (!(tol >= 0) || !std::isfinite(tol)) {
      throw std::invalid_argument("solver tolerance " + Fmt(tol) + " must be finite and >= 0");
    }
  }
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
  if (init_pose != nullptr) {
    for (int i = 0; i < 6; ++i) {
      if (!std::isfinite(init_pose[i])) {
        throw std::invalid_argument(where + ": initial pose holds a non-finite value " +
                                    Fmt(init_pose[i]));
      }
    }
  }
}

// ---- The solver ----------------------------------------------------------------------------

namespace {

// Per mirror case: the landmarks taking part and their targets.
struct CaseData {
  std::vector<int> index;                     // [n_vis] landmark indices
  std::vector<double> targets[2], sqrt_w[2];  // per view: [n_vis, 2] mm, [n_vis]
  int n_vis() const { return static_cast<int>(index.size()); }
};

// Per-thread scratch space: Ceres context, case data and cost functions reused across frames.
struct Workspace {
  std::unique_ptr<ceres::Context> context{ceres::Context::Create()};
  std::vector<int> partner;
  CaseData cases[4];
  std::vector<std::unique_ptr<internal::ViewResidual>> costs;  // pool
};

Workspace& ThreadWorkspace() {
  thread_local Workspace ws;
  return ws;
}

struct CaseOutcome {
  bool solved = false;
  double p[6];      // solver parameters (phi, tau)
  double x[12];     // R [9] row-major, tau [3]
  double objective = kNaN;
  double rms_mm[2], rms_px[2];
  int iterations = 0;
  bool converged = false;
};

// Objective of the mode (exact, no smoothing) and unweighted per-view RMS at state x.
double ExactObjective(const RegistrationSetup& setup, const CaseData& cd, const double* x,
                      const RegistrationOptions& o, double rms_mm[2], double rms_px[2]) {
  double total = 0;
  for (int k = 0; k < 2; ++k) {
    const ConeView& view = setup.views[k];
    double sum_w = 0, sum_sq = 0, sum_px = 0;
    for (int i = 0; i < cd.n_vis(); ++i) {
      const double* X = setup.landmarks + 3 * cd.index[i];
      const Vec3<double> Xw{Dot3(x, X) + x[9], Dot3(x + 3, X) + x[10], Dot3(x + 6, X) + x[11]};
      double pu, pv;
      ProjectToDetectorMm(view, Xw, &pu, &pv);
      const double du = pu - cd.targets[k][2 * i], dv = pv - cd.targets[k][2 * i + 1];
      const double s = du * du + dv * dv;
      const double w = cd.sqrt_w[k][i] * cd.sqrt_w[k][i];
      sum_sq += s;
      sum_px += (du / view.pitch_u) * (du / view.pitch_u) + (dv / view.pitch_v) * (dv / view.pitch_v);
      const double ws_ = w * s;
      if (o.mode == ObjectiveMode::kFrobenius) {
        sum_w += ws_;
      } else {
        const double a2 = o.loss_scale_mm * o.loss_scale_mm;
        switch (o.loss) {
          case RobustLoss::kNone:
            sum_w += ws_;
            break;
          case RobustLoss::kHuber:
            sum_w += ws_ <= a2 ? ws_ : 2.0 * o.loss_scale_mm * std::sqrt(ws_) - a2;
            break;
          case RobustLoss::kCauchy:
            sum_w += a2 * std::log1p(ws_ / a2);
            break;
        }
      }
    }
    total += o.mode == ObjectiveMode::kFrobenius ? std::sqrt(sum_w) : sum_w;
    rms_mm[k] = std::sqrt(sum_sq / cd.n_vis());
    rms_px[k] = std::sqrt(sum_px / cd.n_vis());
  }
  return total;
}

void BuildCase(const RegistrationSetup& setup, const std::vector<int>& partner,
               const double* detections, const double* weights, int c, CaseData* cd) {
  const int n = setup.num_landmarks;
  const bool flip[2] = {(c & 1) != 0, (c & 2) != 0};
  cd->index.clear();
  for (int k = 0; k < 2; ++k) {
    cd->targets[k].clear();
    cd->sqrt_w[k].clear();
  }
  for (int i = 0; i < n; ++i) {
    double tgt[2][2], sw[2];
    bool ok = true;
    for (int k = 0; k < 2; ++k) {
      const ConeView& view = setup.views[k];
      const int src = flip[k] ? partner[i] : i;
      const double px = detections[(k * n + src) * 2], py = detections[(k * n + src) * 2 + 1];
      const double w = weights != nullptr ? weights[k * n + src] : 1.0;
      if (std::isnan(px) || !InImage(px, py, view.width, view.height) || !(w > 0)) {
        ok = false;
        break;
      }
      tgt[k][0] = (px - 0.5 * (view.width - 1)) * view.pitch_u;
      tgt[k][1] = (py - 0.5 * (view.height - 1)) * view.pitch_v;
      sw[k] = std::sqrt(w);
    }
    if (!ok) continue;
    cd->index.push_back(i);
    for (int k = 0; k < 2; ++k) {
      cd->targets[k].push_back(tgt[k][0]);
      cd->targets[k].push_back(tgt[k][1]);
      cd->sqrt_w[k].push_back(sw[k]);
    }
  }
}

}  // namespace

RegistrationResult RegisterFrame(const RegistrationSetup& setup, const double* detections,
                                 const double* weights, const double* init_pose,
                                 const RegistrationOptions& options) {
  ValidateRegistrationSetup(setup);
  ValidateRegistrationOptions(options);
  ValidateFrameInput(setup, detections, weights, init_pose, 0);
  RegistrationResult r;
  RegisterFrames(setup, detections, weights, init_pose, 1, &r, options);
  return r;
}

namespace {

RegistrationResult SolveFrame(const RegistrationSetup& setup, const internal::ViewGeometry g[2],
                              const double* detections, const double* weights,
                              const double* init_pose, const RegistrationOptions& o) {
  Workspace& ws = ThreadWorkspace();
  const int n = setup.num_landmarks;
  RegistrationResult res;
  std::fill(res.pose, res.pose + 6, kNaN);
  std::fill(res.matrix, res.matrix + 16, kNaN);
  std::fill(res.case_objective, res.case_objective + 4, kNaN);
  res.objective = kNaN;
  res.rms_mm[0] = res.rms_mm[1] = res.rms_px[0] = res.rms_px[1] = kNaN;

  ws.partner.resize(n);
  for (int i = 0; i < n; ++i) ws.partner[i] = i;
  for (int p = 0; p < setup.num_pairs; ++p) {
    ws.partner[setup.pairs[2 * p]] = setup.pairs[2 * p + 1];
    ws.partner[setup.pairs[2 * p + 1]] = setup.pairs[2 * p];
  }

  // Start: R0 and tau0; the solver's rotation is an increment phi about R0 (starts at 0).
  double R0[9], tau0[3];
  if (init_pose != nullptr) {
    RotationFromEulerZYX(init_pose, R0);
    for (int i = 0; i < 3; ++i) tau0[i] = init_pose[3 + i];
  } else {
    for (int i = 0; i < 9; ++i) R0[i] = (i % 4 == 0) ? 1.0 : 0.0;
    SystemCentre(setup.views, tau0);
  }

  ceres::Problem::Options po;
  po.cost_function_ownership = ceres::DO_NOT_TAKE_OWNERSHIP;
  po.loss_function_ownership = ceres::DO_NOT_TAKE_OWNERSHIP;
  po.disable_all_safety_checks = true;
  po.context = ws.context.get();

  ceres::Solver::Options so;
  so.linear_solver_type = ceres::DENSE_NORMAL_CHOLESKY;
  so.minimizer_progress_to_stdout = false;
  so.logging_type = ceres::SILENT;
  so.num_threads = 1;
  so.function_tolerance = o.function_tolerance;
  so.gradient_tolerance = o.gradient_tolerance;
  so.parameter_tolerance = o.parameter_tolerance;

  static const internal::FrobeniusLoss frobenius_loss;
  const ceres::HuberLoss huber(o.loss_scale_mm);
  const ceres::CauchyLoss cauchy(o.loss_scale_mm);
  const ceres::LossFunction* loss = nullptr;
  bool per_landmark = false;
  if (o.mode == ObjectiveMode::kFrobenius) {
    loss = &frobenius_loss;
  } else if (o.loss == RobustLoss::kHuber) {
    loss = &huber;
    per_landmark = true;
  } else if (o.loss == RobustLoss::kCauchy) {
    loss = &cauchy;
    per_landmark = true;
  }

  // Runs (or continues) the solve of one case for at most max_iter iterations.
  auto run = [&](int c, CaseOutcome* out, int max_iter) {
    const CaseData& cd = ws.cases[c];
    const int k_vis = cd.n_vis();
    const int n_blocks = per_landmark ? 2 * k_vis : 2;
    while (static_cast<int>(ws.costs.size()) < n_blocks)
      ws.costs.push_back(std::make_unique<internal::ViewResidual>());
    for (int k = 0; k < 2; ++k) {
      if (per_landmark) {
        for (int i = 0; i < k_vis; ++i)
          ws.costs[k * k_vis + i]->Reset(&g[k], R0, setup.landmarks, cd.index.data() + i,
                                         cd.targets[k].data() + 2 * i, cd.sqrt_w[k].data() + i,
                                         1);
      } else {
        ws.costs[k]->Reset(&g[k], R0, setup.landmarks, cd.index.data(), cd.targets[k].data(),
                           cd.sqrt_w[k].data(), k_vis);
      }
    }
    ceres::Problem problem(po);
    for (int b = 0; b < n_blocks; ++b)
      problem.AddResidualBlock(ws.costs[b].get(), const_cast<ceres::LossFunction*>(loss), out->p);
    so.max_num_iterations = max_iter;
    ceres::Solver::Summary summary;
    ceres::Solve(so, &problem, &summary);
    if (!summary.IsSolutionUsable()) return false;
    out->solved = true;
    out->iterations += static_cast<int>(summary.iterations.size()) - 1;
    out->converged = summary.termination_type == ceres::CONVERGENCE;
    double E[9];
    internal::ExpSO3(out->p, E);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        out->x[3 * i + j] = E[3 * i] * R0[j] + E[3 * i + 1] * R0[3 + j] + E[3 * i + 2] * R0[6 + j];
    for (int i = 0; i < 3; ++i) out->x[9 + i] = out->p[3 + i];
    out->objective = ExactObjective(setup, cd, out->x, o, out->rms_mm, out->rms_px);
    return true;
  };

  const int n_cases = (o.mirror && setup.num_pairs > 0) ? 4 : 1;
  const bool screen = n_cases > 1 && o.screen_iterations > 0 &&
                      o.screen_iterations < o.max_iterations;
  CaseOutcome outcome[4];
  int max_vis = 0;
  bool any_failed = false;
  double best_objective = std::numeric_limits<double>::infinity();
  for (int c = 0; c < n_cases; ++c) {
    BuildCase(setup, ws.partner, detections, weights, c, &ws.cases[c]);
    const int k_vis = ws.cases[c].n_vis();
    max_vis = std::max(max_vis, k_vis);
    if (k_vis < o.min_visible) continue;
    CaseOutcome& out = outcome[c];
    std::fill(out.p, out.p + 3, 0.0);
    std::copy(tau0, tau0 + 3, out.p + 3);
    if (!run(c, &out, screen ? o.screen_iterations : o.max_iterations)) {
      any_failed = true;
      continue;
    }
    best_objective = std::min(best_objective, out.objective);
  }
  // Screening: finish the cases that did not converge and are still contenders.
  if (screen) {
    for (int c = 0; c < n_cases; ++c) {
      CaseOutcome& out = outcome[c];
      if (!out.solved || out.converged || out.iterations >= o.max_iterations) continue;
      if (!(out.objective <= o.screen_ratio * best_objective)) continue;
      run(c, &out, o.max_iterations - out.iterations);
    }
  }

  int best_case = -1;
  for (int c = 0; c < n_cases; ++c) {
    if (!outcome[c].solved) continue;
    res.case_objective[c] = outcome[c].objective;
    if (best_case < 0 || outcome[c].objective < outcome[best_case].objective) best_case = c;
  }
  if (best_case < 0) {
    res.status = any_failed ? RegistrationStatus::kFailed : RegistrationStatus::kTooFewLandmarks;
    res.n_vis = max_vis;
    return res;
  }
  const CaseOutcome& best = outcome[best_case];
  res.status = RegistrationStatus::kOk;
  res.mirror_case = best_case;
  res.n_vis = ws.cases[best_case].n_vis();
  res.objective = best.objective;
  res.iterations = best.iterations;
  res.converged = best.converged;
  for (int k = 0; k < 2; ++k) {
    res.rms_mm[k] = best.rms_mm[k];
    res.rms_px[k] = best.rms_px[k];
  }
  EulerFromRotation(best.x, res.pose);
  for (int i = 0; i < 3; ++i) res.pose[3 + i] = best.x[9 + i];
  PoseToMatrix(res.pose, res.matrix);
  return res;
}

}  // namespace

void RegisterFrames(const RegistrationSetup& setup, const double* detections,
                    const double* weights, const double* init_poses, int num_frames,
                    RegistrationResult* out, const RegistrationOptions& options) {
  ValidateRegistrationSetup(setup);
  ValidateRegistrationOptions(options);
  if (num_frames < 0) {
    throw std::invalid_argument("frame count " + std::to_string(num_frames) + " is negative");
  }
  const int n = setup.num_landmarks;
  const long long det_stride = 4LL * n, w_stride = 2LL * n;
  for (int f = 0; f < num_frames; ++f) {
    ValidateFrameInput(setup, detections + f * det_stride,
                       weights != nullptr ? weights + f * w_stride : nullptr,
                       init_poses != nullptr ? init_poses + 6LL * f : nullptr, f);
  }
  const internal::ViewGeometry g[2] = {internal::ViewGeometry(setup.views[0]),
                                       internal::ViewGeometry(setup.views[1])};
  ParallelFor(num_frames, options.num_threads, [&](long long f) {
    out[f] = SolveFrame(setup, g, detections + f * det_stride,
                        weights != nullptr ? weights + f * w_stride : nullptr,
                        init_poses != nullptr ? init_poses + 6LL * f : nullptr, options);
  });
}

}  // namespace fluororeg
