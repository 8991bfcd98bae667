// One frame: build the landmark set of each mirror case, screen the cases with a few cheap
// LM iterations (screening.cc), take the contenders to convergence with that LM (Ceres solves
// those it does not bring there), keep the case with the lowest objective.
#include "frame_solver.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "fluororeg/so3.h"
#include "residual.h"
#include "screening.h"

namespace fluororeg {
namespace internal {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

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
  std::vector<std::unique_ptr<ViewResidual>> costs;  // pool
  RotationCache rotation;                             // shared by the pool's blocks
  ScreeningCost screening;                            // the case being screened
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
double ExactObjective(const RegistrationSetup& setup, const ConeProjector projectors[2],
                      const CaseData& cd, const double* x, const RegistrationOptions& o,
                      double rms_mm[2], double rms_px[2]) {
  double total = 0;
  for (int k = 0; k < 2; ++k) {
    const ConeView& view = setup.views[k];
    double sum_w = 0, sum_sq = 0, sum_px = 0;
    for (int i = 0; i < cd.n_vis(); ++i) {
      const double* X = setup.landmarks + 3 * cd.index[i];
      const Vec3<double> Xw{x[0] * X[0] + x[1] * X[1] + x[2] * X[2] + x[9],
                            x[3] * X[0] + x[4] * X[1] + x[5] * X[2] + x[10],
                            x[6] * X[0] + x[7] * X[1] + x[8] * X[2] + x[11]};
      double pu, pv;
      projectors[k].Project(Xw, &pu, &pv);
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

// Residuals of the case at state x at the bone (see RegistrationOptions::max_residual_mm):
// per view, inliers [2] = the landmarks within kInlierFactor * max_residual_mm and
// rms_bone_mm [2] = their RMS, mm (all landmarks when max_residual_mm is 0).
void BoneResiduals(const RegistrationSetup& setup, const ConeProjector projectors[2],
                   const CaseData& cd, const double* x, double max_residual_mm,
                   double rms_bone_mm[2], int inliers[2]) {
  const double inlier_mm = kInlierFactor * max_residual_mm;
  for (int k = 0; k < 2; ++k) {
    const ConeProjector& g = projectors[k];
    double sum_sq = 0;
    int count = 0;
    for (int i = 0; i < cd.n_vis(); ++i) {
      const double* X = setup.landmarks + 3 * cd.index[i];
      const double Xw[3] = {x[0] * X[0] + x[1] * X[1] + x[2] * X[2] + x[9],
                            x[3] * X[0] + x[4] * X[1] + x[5] * X[2] + x[10],
                            x[6] * X[0] + x[7] * X[1] + x[8] * X[2] + x[11]};
      double pu, pv;
      g.Project(Vec3<double>{Xw[0], Xw[1], Xw[2]}, &pu, &pv);
      const double du = pu - cd.targets[k][2 * i], dv = pv - cd.targets[k][2 * i + 1];
      // 1 / magnification at the landmark: (n . (X - S)) / (n . (D - S)).
      const double depth = g.n[0] * (Xw[0] - g.S[0]) + g.n[1] * (Xw[1] - g.S[1]) +
                           g.n[2] * (Xw[2] - g.S[2]);
      const double e = std::sqrt(du * du + dv * dv) * std::fabs(depth / g.sd);  // mm at the bone
      if (max_residual_mm == 0.0 || e <= inlier_mm) {
        sum_sq += e * e;
        ++count;
      }
    }
    rms_bone_mm[k] = count > 0 ? std::sqrt(sum_sq / count) : kNaN;
    inliers[k] = count;
  }
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
      PixelToIntensifierMm(view, px, py, &tgt[k][0], &tgt[k][1]);
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

RegistrationResult SolveFrame(const RegistrationSetup& setup, const ConeProjector g[2],
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
  res.rms_bone_mm[0] = res.rms_bone_mm[1] = kNaN;

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

  static const FrobeniusLoss frobenius_loss;
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

  // Points the pool of cost functions at case c; returns the number of residual blocks.
  auto set_blocks = [&](int c) {
    const CaseData& cd = ws.cases[c];
    const int k_vis = cd.n_vis();
    const int n_blocks = per_landmark ? 2 * k_vis : 2;
    while (static_cast<int>(ws.costs.size()) < n_blocks)
      ws.costs.push_back(std::make_unique<ViewResidual>());
    for (int k = 0; k < 2; ++k) {
      if (per_landmark) {
        for (int i = 0; i < k_vis; ++i)
          ws.costs[k * k_vis + i]->Reset(&g[k], R0, setup.landmarks, cd.index.data() + i,
                                         cd.targets[k].data() + 2 * i, cd.sqrt_w[k].data() + i,
                                         1, &ws.rotation);
      } else {
        ws.costs[k]->Reset(&g[k], R0, setup.landmarks, cd.index.data(), cd.targets[k].data(),
                           cd.sqrt_w[k].data(), k_vis, &ws.rotation);
      }
    }
    return n_blocks;
  };
  // State x [12] (R row-major, tau) of solver parameters p [6] = (phi, tau).
  auto state = [&](const double* p, double* x) {
    double E[9];
    ExpSO3(p, E);
    MultiplyRotations(E, R0, x);
    for (int i = 0; i < 3; ++i) x[9 + i] = p[3 + i];
  };

  // The Ceres solve of one case from parameters p0 [6] (the start, or where screening left
  // it after `done` iterations), at most max_iterations iterations in all.
  auto run = [&](int c, const double* p0, int done, CaseOutcome* out) {
    const int n_blocks = set_blocks(c);
    std::copy(p0, p0 + 6, out->p);
    ceres::Problem problem(po);
    for (int b = 0; b < n_blocks; ++b)
      problem.AddResidualBlock(ws.costs[b].get(), const_cast<ceres::LossFunction*>(loss), out->p);
    so.max_num_iterations = std::max(o.max_iterations - done, 0);
    ceres::Solver::Summary summary;
    ceres::Solve(so, &problem, &summary);
    if (!summary.IsSolutionUsable()) return false;
    out->solved = true;
    out->iterations = done + static_cast<int>(summary.iterations.size()) - 1;
    out->converged = summary.termination_type == ceres::CONVERGENCE;
    state(out->p, out->x);
    out->objective = ExactObjective(setup, g, ws.cases[c], out->x, o, out->rms_mm, out->rms_px);
    return true;
  };

  // At most `iterations` steps of the screening LM on case c from solver parameters p [6] (in
  // and out); returns the steps taken, -1 when the cost cannot be evaluated at p; `converged`:
  // see ScreenSolve. The cost is set up for case c unless it already is.
  int screening_case = -1;
  auto screen_case = [&](int c, int iterations, double* p, bool* converged) {
    if (screening_case != c) {
      const CaseData& cd = ws.cases[c];
      const double* targets[2] = {cd.targets[0].data(), cd.targets[1].data()};
      const double* sqrt_w[2] = {cd.sqrt_w[0].data(), cd.sqrt_w[1].data()};
      ws.screening.Reset(g, R0, setup.landmarks, cd.index.data(), cd.n_vis(), targets, sqrt_w,
                         loss, per_landmark);
      screening_case = c;
    }
    return ScreenSolve(ws.screening, iterations, o.function_tolerance, o.parameter_tolerance, p,
                       converged);
  };
  // The outcome of case c where the small LM converged, at solver parameters p [6] after
  // `iterations` steps.
  auto take_screened = [&](int c, const double* p, int iterations, CaseOutcome* out) {
    std::copy(p, p + 6, out->p);
    out->solved = true;
    out->iterations = iterations;
    out->converged = true;
    state(out->p, out->x);
    out->objective = ExactObjective(setup, g, ws.cases[c], out->x, o, out->rms_mm, out->rms_px);
  };

  const int n_cases = (o.mirror && setup.num_pairs > 0) ? 4 : 1;
  const bool screen = n_cases > 1 && o.screen_iterations > 0 &&
                      o.screen_iterations < o.max_iterations;
  CaseOutcome outcome[4];
  bool contender[4] = {false, false, false, false};
  double screened[4] = {kNaN, kNaN, kNaN, kNaN};  // objective after screening
  double start[4][6];                             // solver parameters after screening
  int screen_done[4] = {0, 0, 0, 0};              // screening iterations taken
  bool screen_converged[4] = {false, false, false, false};
  int max_vis = 0;
  bool any_failed = false;
  double best_screened = std::numeric_limits<double>::infinity();
  for (int c = 0; c < n_cases; ++c) {
    BuildCase(setup, ws.partner, detections, weights, c, &ws.cases[c]);
    const int k_vis = ws.cases[c].n_vis();
    max_vis = std::max(max_vis, k_vis);
    if (k_vis < o.min_visible) continue;
    contender[c] = true;
    double* p = start[c];
    std::fill(p, p + 3, 0.0);
    std::copy(tau0, tau0 + 3, p + 3);
    if (!screen) continue;
    // Screening: a few LM iterations from the start (cheap); the far worse cases are not
    // solved further (the start cannot be evaluated: Ceres could not either).
    screen_done[c] = screen_case(c, o.screen_iterations, p, &screen_converged[c]);
    if (screen_done[c] < 0) {
      contender[c] = false;
      any_failed = true;
      continue;
    }
    double x[12], rms_mm[2], rms_px[2];
    state(p, x);
    screened[c] = ExactObjective(setup, g, ws.cases[c], x, o, rms_mm, rms_px);
    if (std::isnan(screened[c])) screened[c] = std::numeric_limits<double>::infinity();
    best_screened = std::min(best_screened, screened[c]);
  }
  // The contenders go on to convergence with the small LM; Ceres solves those it leaves
  // short of it (or where it failed), from where the LM stopped (or, should that fail, from
  // the start).
  const double start0[6] = {0, 0, 0, tau0[0], tau0[1], tau0[2]};
  for (int c = 0; c < n_cases; ++c) {
    if (screen && contender[c] && !(screened[c] <= o.screen_ratio * best_screened))
      contender[c] = false;
    if (!contender[c]) continue;
    if (screen) {
      if (!screen_converged[c]) {
        const int more = screen_case(c, o.max_iterations - 1 - screen_done[c], start[c],
                                     &screen_converged[c]);
        if (more > 0) screen_done[c] += more;
      }
      if (screen_converged[c]) {
        take_screened(c, start[c], screen_done[c], &outcome[c]);
        continue;
      }
    }
    if (!run(c, start[c], screen_done[c], &outcome[c]) &&
        (screen_done[c] == 0 || !run(c, start0, 0, &outcome[c])))
      any_failed = true;
  }

  int best_case = -1;
  for (int c = 0; c < n_cases; ++c) {
    if (!outcome[c].solved) {
      // Screened out: the objective at that point (NaN when Ceres failed on a contender).
      res.case_objective[c] = contender[c] ? kNaN : screened[c];
      continue;
    }
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
  BoneResiduals(setup, g, ws.cases[best_case], best.x, o.max_residual_mm, res.rms_bone_mm,
                res.inliers);
  EulerFromRotation(best.x, res.pose);
  for (int i = 0; i < 3; ++i) res.pose[3 + i] = best.x[9 + i];
  PoseToMatrix(res.pose, res.matrix);
  return res;
}

}  // namespace internal
}  // namespace fluororeg
