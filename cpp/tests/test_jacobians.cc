// Analytic Jacobians of the registration solver against numeric differentiation
// (ceres::GradientChecker) and the pose manifold's consistency.
#include <ceres/ceres.h>
#include <ceres/gradient_checker.h>
#include <ceres/rotation.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "fluororeg/so3.h"
#include "registration/residual.h"
#include "registration/screening.h"
#include "synthetic.h"

namespace fluororeg {
namespace {

using ViewGeometry = ConeProjector;  // the projection the residual uses
using internal::ViewResidual;

TEST(Jacobians, ViewResidualMatchesNumericDiff) {
  const testing::Scene scene;
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> uw(0.2, 2.0), ut(-200.0, 200.0), ua(-1.5, 1.5);
  for (int k = 0; k < 2; ++k) {
    const ViewGeometry g(scene.views[k]);
    for (int trial = 0; trial < 20; ++trial) {
      double pose[6], R0[9];
      scene.RandomPose(rng, pose);
      // Reference rotation near gimbal lock (theta_y = 90 deg) in some trials.
      if (trial % 4 == 0) pose[1] = M_PI / 2;
      RotationFromEulerZYX(pose, R0);
      double x[6] = {ua(rng), ua(rng), ua(rng), pose[3], pose[4], pose[5]};
      if (trial % 5 == 0) x[0] = x[1] = x[2] = 0.0;  // the start of every solve
      const int m = 1 + trial % 7;
      std::vector<int> index(m);
      std::vector<double> targets(2 * m), sqrt_w(m);
      for (int i = 0; i < m; ++i) {
        index[i] = (5 * i + trial) % scene.n;
        targets[2 * i] = ut(rng);
        targets[2 * i + 1] = ut(rng);
        sqrt_w[i] = uw(rng);
      }
      const ViewResidual cost(&g, R0, scene.landmarks.data(), index.data(), targets.data(),
                              sqrt_w.data(), m);
      ceres::NumericDiffOptions nd;
      ceres::GradientChecker checker(&cost, static_cast<std::vector<const ceres::Manifold*>*>(nullptr), nd);
      ceres::GradientChecker::ProbeResults results;
      const double* params[1] = {x};
      EXPECT_TRUE(checker.Probe(params, 1e-7, &results))
          << "view " << k << " trial " << trial << ": " << results.error_log;
      EXPECT_LT(results.maximum_relative_error, 1e-7);
    }
  }
}

TEST(Jacobians, ViewResidualFailsBehindSource) {
  const testing::Scene scene;
  const ViewGeometry g(scene.views[0]);
  const int index = 0;
  const double target[2] = {0, 0}, sw = 1, R0[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  const ViewResidual cost(&g, R0, scene.landmarks.data(), &index, target, &sw, 1);
  double x[6] = {0, 0, 0};
  // Put the model 100 mm behind the view 1 source.
  for (int i = 0; i < 3; ++i)
    x[3 + i] = scene.views[0].source[i] -
               100.0 * (scene.views[0].intensifier_centre[i] - scene.views[0].source[i]) / 1100.0;
  const double* params[1] = {x};
  double r[2];
  EXPECT_FALSE(cost.Evaluate(params, r, nullptr));
}

// The screening's four-landmarks-at-a-time normal equations against the same sums built from
// ViewResidual blocks (the Ceres cost): per-view blocks with the Frobenius loss or none, and
// per-landmark blocks with the robust losses; landmark counts that do not fill the last group.
TEST(Jacobians, ScreeningCostMatchesViewResidualBlocks) {
  const testing::Scene scene;
  const ConeProjector g[2] = {ConeProjector(scene.views[0]), ConeProjector(scene.views[1])};
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> uw(0.2, 2.0), ue(-3.0, 3.0), ua(-0.3, 0.3);
  const internal::FrobeniusLoss frobenius;
  const ceres::CauchyLoss cauchy(2.0);
  const ceres::HuberLoss huber(2.0);
  struct Mode {
    const ceres::LossFunction* loss;
    bool per_landmark;
  } modes[4] = {{nullptr, false}, {&frobenius, false}, {&cauchy, true}, {&huber, true}};
  for (int trial = 0; trial < 16; ++trial) {
    const Mode mode = modes[trial % 4];
    double pose[6], R0[9];
    scene.RandomPose(rng, pose);
    RotationFromEulerZYX(pose, R0);
    const int m = 3 + trial;  // 3 .. 18 landmarks
    std::vector<int> index(m);
    std::vector<double> targets[2], sqrt_w[2];
    for (int i = 0; i < m; ++i) index[i] = (7 * i + trial) % scene.n;
    // Targets: the landmarks' projections at the pose, a few mm off (robust losses see both
    // small and large residuals).
    double xf[12];
    RotationFromEulerZYX(pose, xf);
    for (int k = 0; k < 2; ++k) {
      for (int i = 0; i < m; ++i) {
        const double* X = scene.landmarks.data() + 3 * index[i];
        const Vec3<double> Xw{xf[0] * X[0] + xf[1] * X[1] + xf[2] * X[2] + pose[3],
                              xf[3] * X[0] + xf[4] * X[1] + xf[5] * X[2] + pose[4],
                              xf[6] * X[0] + xf[7] * X[1] + xf[8] * X[2] + pose[5]};
        double pu, pv;
        ASSERT_TRUE(g[k].Project(Xw, &pu, &pv));
        targets[k].push_back(pu + ue(rng) * (i % 3 == 0 ? 4.0 : 1.0));
        targets[k].push_back(pv + ue(rng));
        sqrt_w[k].push_back(uw(rng));
      }
    }
    const double x[6] = {ua(rng), ua(rng), ua(rng), pose[3] + 2.0, pose[4] - 1.0, pose[5]};
    // Reference: 1/2 sum rho(s_b), sum rho' J_b^T J_b, sum rho' J_b^T r_b over ViewResidual blocks.
    double cost_ref = 0, H_ref[36] = {}, g_ref[6] = {};
    std::vector<std::unique_ptr<ViewResidual>> blocks;
    for (int k = 0; k < 2; ++k) {
      if (mode.per_landmark) {
        for (int i = 0; i < m; ++i)
          blocks.push_back(std::make_unique<ViewResidual>(&g[k], R0, scene.landmarks.data(),
                                                          &index[i], &targets[k][2 * i],
                                                          &sqrt_w[k][i], 1));
      } else {
        blocks.push_back(std::make_unique<ViewResidual>(&g[k], R0, scene.landmarks.data(),
                                                        index.data(), targets[k].data(),
                                                        sqrt_w[k].data(), m));
      }
    }
    for (const auto& block : blocks) {
      const int n_res = block->num_residuals();
      std::vector<double> r(n_res), J(6 * n_res);
      const double* params[1] = {x};
      double* jac[1] = {J.data()};
      ASSERT_TRUE(block->Evaluate(params, r.data(), jac));
      double s = 0;
      for (double v : r) s += v * v;
      double rho[3] = {s, 1.0, 0.0};
      if (mode.loss != nullptr) mode.loss->Evaluate(s, rho);
      cost_ref += 0.5 * rho[0];
      for (int i = 0; i < n_res; ++i) {
        for (int a = 0; a < 6; ++a) {
          g_ref[a] += rho[1] * J[6 * i + a] * r[i];
          for (int c = 0; c < 6; ++c) H_ref[a + 6 * c] += rho[1] * J[6 * i + a] * J[6 * i + c];
        }
      }
    }
    internal::ScreeningCost screening;
    const double* tp[2] = {targets[0].data(), targets[1].data()};
    const double* wp[2] = {sqrt_w[0].data(), sqrt_w[1].data()};
    screening.Reset(g, R0, scene.landmarks.data(), index.data(), m, tp, wp, mode.loss,
                    mode.per_landmark);
    double cost, H[36], grad[6];
    ASSERT_TRUE(screening.Evaluate(x, &cost, H, grad));
    EXPECT_NEAR(cost, cost_ref, 1e-10 * cost_ref) << "trial " << trial;
    double h_scale = 0, g_scale = 0;
    for (int a = 0; a < 36; ++a) h_scale = std::max(h_scale, std::fabs(H_ref[a]));
    for (int a = 0; a < 6; ++a) g_scale = std::max(g_scale, std::fabs(g_ref[a]));
    for (int a = 0; a < 36; ++a) EXPECT_NEAR(H[a], H_ref[a], 1e-10 * h_scale) << "trial " << trial;
    for (int a = 0; a < 6; ++a) EXPECT_NEAR(grad[a], g_ref[a], 1e-10 * g_scale) << "trial " << trial;
  }
  // A landmark behind a source: no evaluation.
  const double R0[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  const int index[5] = {0, 1, 2, 3, 4};
  const std::vector<double> t(10, 0.0), w(5, 1.0);
  const double* tp[2] = {t.data(), t.data()};
  const double* wp[2] = {w.data(), w.data()};
  internal::ScreeningCost screening;
  screening.Reset(g, R0, scene.landmarks.data(), index, 5, tp, wp, nullptr, false);
  double x[6] = {0, 0, 0};
  for (int i = 0; i < 3; ++i)
    x[3 + i] = scene.views[0].source[i] -
               100.0 * (scene.views[0].intensifier_centre[i] - scene.views[0].source[i]) / 1100.0;
  double cost, H[36], grad[6];
  EXPECT_FALSE(screening.Evaluate(x, &cost, H, grad));
}

// The screening LM brought to convergence stops where Ceres does on the same cost (the frame
// solver then takes its result without a Ceres solve), and says it converged; stopped by its
// iteration limit it says it did not (the frame solver hands such a case to Ceres).
TEST(Jacobians, ScreenSolveConvergesWhereCeresDoes) {
  const testing::Scene scene;
  const ConeProjector g[2] = {ConeProjector(scene.views[0]), ConeProjector(scene.views[1])};
  std::mt19937 rng(31);
  std::normal_distribution<double> noise(0.0, 0.8);  // mm on the detector
  const ceres::CauchyLoss cauchy(1.0);
  for (int trial = 0; trial < 8; ++trial) {
    const bool robust = trial % 2 == 1;  // Cauchy per landmark, or plain least squares per view
    double pose[6], R0[9], start_angles[3];
    scene.RandomPose(rng, pose);
    for (int i = 0; i < 3; ++i) start_angles[i] = pose[i] + (i == trial % 3 ? 0.1 : -0.05);
    RotationFromEulerZYX(start_angles, R0);
    double Rt[9];
    RotationFromEulerZYX(pose, Rt);
    const int m = scene.n;
    std::vector<int> index(m);
    std::vector<double> targets[2], sqrt_w[2];
    for (int i = 0; i < m; ++i) index[i] = i;
    for (int k = 0; k < 2; ++k) {
      for (int i = 0; i < m; ++i) {
        const double* X = scene.landmarks.data() + 3 * i;
        const Vec3<double> Xw{Rt[0] * X[0] + Rt[1] * X[1] + Rt[2] * X[2] + pose[3],
                              Rt[3] * X[0] + Rt[4] * X[1] + Rt[5] * X[2] + pose[4],
                              Rt[6] * X[0] + Rt[7] * X[1] + Rt[8] * X[2] + pose[5]};
        double pu, pv;
        ASSERT_TRUE(g[k].Project(Xw, &pu, &pv));
        const double outlier = (robust && i == 5) ? 25.0 : 0.0;  // one wild landmark
        targets[k].push_back(pu + noise(rng) + outlier);
        targets[k].push_back(pv + noise(rng));
        sqrt_w[k].push_back(1.0);
      }
    }
    const ceres::LossFunction* loss = robust ? &cauchy : nullptr;
    internal::ScreeningCost screening;
    const double* tp[2] = {targets[0].data(), targets[1].data()};
    const double* wp[2] = {sqrt_w[0].data(), sqrt_w[1].data()};
    screening.Reset(g, R0, scene.landmarks.data(), index.data(), m, tp, wp, loss, robust);
    const double start[6] = {0, 0, 0, pose[3] + 6.0, pose[4] - 4.0, pose[5] + 3.0};

    double x[6];
    std::copy(start, start + 6, x);
    bool converged = true;
    EXPECT_EQ(internal::ScreenSolve(screening, 1, 1e-10, 1e-10, x, &converged), 1);
    EXPECT_FALSE(converged) << "trial " << trial << ": stopped by the limit";

    std::copy(start, start + 6, x);
    const int steps = internal::ScreenSolve(screening, 100, 1e-10, 1e-10, x, &converged);
    EXPECT_TRUE(converged) << "trial " << trial;
    EXPECT_GT(steps, 1);
    EXPECT_LT(steps, 100);

    // Ceres on the ViewResidual blocks from the same start, to its own convergence.
    double y[6];
    std::copy(start, start + 6, y);
    ceres::Problem::Options po;
    po.loss_function_ownership = ceres::DO_NOT_TAKE_OWNERSHIP;
    ceres::Problem problem(po);  // owns the residual blocks
    for (int k = 0; k < 2; ++k) {
      for (int i = 0; i < (robust ? m : 1); ++i) {
        problem.AddResidualBlock(
            new ViewResidual(&g[k], R0, scene.landmarks.data(), index.data() + i,
                             targets[k].data() + 2 * i, sqrt_w[k].data() + i, robust ? 1 : m),
            const_cast<ceres::LossFunction*>(loss), y);
      }
    }
    ceres::Solver::Options so;
    so.linear_solver_type = ceres::DENSE_NORMAL_CHOLESKY;
    so.function_tolerance = 1e-14;
    so.parameter_tolerance = 1e-14;
    so.max_num_iterations = 200;
    ceres::Solver::Summary summary;
    ceres::Solve(so, &problem, &summary);
    ASSERT_EQ(summary.termination_type, ceres::CONVERGENCE) << summary.BriefReport();
    // Reweighting converges linearly: a robust loss's minimum is met less closely within the
    // same tolerances (6e-5 deg and 0.1 um here; Ceres reweights the same way).
    const double tol_rad = robust ? 1e-6 : 1e-8, tol_mm = robust ? 1e-4 : 1e-6;
    for (int a = 0; a < 3; ++a) EXPECT_NEAR(x[a], y[a], tol_rad) << "trial " << trial;
    for (int a = 3; a < 6; ++a) EXPECT_NEAR(x[a], y[a], tol_mm) << "trial " << trial;
  }
}

TEST(Jacobians, SO3ExpLogAndLeftJacobian) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(-1.7, 1.7);
  for (int trial = 0; trial < 20; ++trial) {
    double w[3] = {u(rng), u(rng), u(rng)};
    if (trial == 0) w[0] = w[1] = w[2] = 0.0;
    if (trial == 1) w[0] = 1e-7, w[1] = -2e-7, w[2] = 0.0;
    double R[9], back[3], J[9];
    ExpSO3(w, R);
    // Orthonormal with det +1, and Log inverts Exp.
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        const double d = R[3 * i] * R[3 * j] + R[3 * i + 1] * R[3 * j + 1] + R[3 * i + 2] * R[3 * j + 2];
        EXPECT_NEAR(d, i == j ? 1.0 : 0.0, 1e-12);
      }
    LogSO3(R, back);
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(back[i], w[i], 1e-9);
    // d(exp(w + d) y)/dd = -[exp(w) y]x J_l(w), checked by central differences.
    LeftJacobianSO3(w, J);
    const double y[3] = {30.0, -50.0, 20.0};
    const double Ry[3] = {R[0] * y[0] + R[1] * y[1] + R[2] * y[2],
                          R[3] * y[0] + R[4] * y[1] + R[5] * y[2],
                          R[6] * y[0] + R[7] * y[1] + R[8] * y[2]};
    const double S[9] = {0, Ry[2], -Ry[1], -Ry[2], 0, Ry[0], Ry[1], -Ry[0], 0};  // -[Ry]x
    const double h = 1e-6;
    for (int c = 0; c < 3; ++c) {
      double wp[3] = {w[0], w[1], w[2]}, wm[3] = {w[0], w[1], w[2]}, Rp[9], Rm[9];
      wp[c] += h;
      wm[c] -= h;
      ExpSO3(wp, Rp);
      ExpSO3(wm, Rm);
      for (int r = 0; r < 3; ++r) {
        const double num = ((Rp[3 * r] - Rm[3 * r]) * y[0] + (Rp[3 * r + 1] - Rm[3 * r + 1]) * y[1] +
                            (Rp[3 * r + 2] - Rm[3 * r + 2]) * y[2]) / (2 * h);
        const double ana = S[3 * r] * J[c] + S[3 * r + 1] * J[3 + c] + S[3 * r + 2] * J[6 + c];
        EXPECT_NEAR(ana, num, 1e-6);
      }
    }
  }
}

TEST(Jacobians, FrobeniusLossDerivatives) {
  const internal::FrobeniusLoss loss(1e-3);
  for (double s : {1e-4, 0.1, 1.0, 25.0, 1e4}) {
    double rho[3], rp[3], rm[3];
    loss.Evaluate(s, rho);
    const double h = 1e-6 * s;
    loss.Evaluate(s + h, rp);
    loss.Evaluate(s - h, rm);
    EXPECT_NEAR(rho[0], 2 * (std::sqrt(s + 1e-6) - 1e-3), 1e-12);
    EXPECT_NEAR(rho[1], (rp[0] - rm[0]) / (2 * h), 1e-6 * std::fabs(rho[1]));
    EXPECT_NEAR(rho[2], (rp[1] - rm[1]) / (2 * h), 1e-5 * std::fabs(rho[2]));
  }
}

// The whole Frobenius problem: Ceres' cost equals the paper's sum of norms (up to eps).
TEST(Jacobians, FrobeniusCostIsSumOfNorms) {
  const testing::Scene scene;
  std::mt19937 rng(11);
  double pose[6], R0[9];
  scene.RandomPose(rng, pose);
  RotationFromEulerZYX(pose, R0);
  double x[6] = {0.1, -0.2, 0.05, pose[3], pose[4], pose[5]};
  const internal::FrobeniusLoss loss(1e-9);
  std::vector<int> index(scene.n);
  for (int i = 0; i < scene.n; ++i) index[i] = i;
  std::vector<double> targets(2 * scene.n, 1.0), sw(scene.n, 1.0);
  ceres::Problem::Options po;
  po.cost_function_ownership = ceres::DO_NOT_TAKE_OWNERSHIP;
  po.loss_function_ownership = ceres::DO_NOT_TAKE_OWNERSHIP;
  ceres::Problem problem(po);
  std::vector<std::unique_ptr<ViewGeometry>> geos;
  std::vector<std::unique_ptr<ViewResidual>> costs;
  double expected = 0;
  for (int k = 0; k < 2; ++k) {
    geos.push_back(std::make_unique<ViewGeometry>(scene.views[k]));
    costs.push_back(std::make_unique<ViewResidual>(geos.back().get(), R0, scene.landmarks.data(),
                                                   index.data(), targets.data(), sw.data(),
                                                   scene.n));
    problem.AddResidualBlock(costs.back().get(), const_cast<internal::FrobeniusLoss*>(&loss), x);
    std::vector<double> r(2 * scene.n);
    const double* params[1] = {x};
    ASSERT_TRUE(costs.back()->Evaluate(params, r.data(), nullptr));
    double s = 0;
    for (double e : r) s += e * e;
    expected += std::sqrt(s);
  }
  double cost = 0;
  problem.Evaluate(ceres::Problem::EvaluateOptions(), &cost, nullptr, nullptr, nullptr);
  EXPECT_NEAR(cost, expected, 1e-6);
}

// The residual writes the projection's derivative itself (from ConeProjector's q and 1 / n.d);
// automatic differentiation through geometry.h's ProjectToIntensifierMm and Ceres' angle-axis
// rotation checks both the values (the same projection) and that derivative.
struct AutoDiffViewResidual {
  const ConeView* view;
  const double* R0;
  const double* X;       // one landmark [3]
  const double* target;  // [2] mm
  double sw;
  template <typename T>
  bool operator()(const T* x, T* r) const {
    T E[9], R[9];
    ceres::AngleAxisToRotationMatrix(x, ceres::RowMajorAdapter3x3(E));
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        R[3 * i + j] = E[3 * i] * R0[j] + E[3 * i + 1] * R0[3 + j] + E[3 * i + 2] * R0[6 + j];
    const Vec3<T> Xw{R[0] * X[0] + R[1] * X[1] + R[2] * X[2] + x[3],
                     R[3] * X[0] + R[4] * X[1] + R[5] * X[2] + x[4],
                     R[6] * X[0] + R[7] * X[1] + R[8] * X[2] + x[5]};
    T pu, pv;
    if (!ProjectToIntensifierMm(*view, Xw, &pu, &pv)) return false;
    r[0] = sw * (pu - target[0]);
    r[1] = sw * (pv - target[1]);
    return true;
  }
};

TEST(Jacobians, ViewResidualMatchesAutoDiffThroughGeometry) {
  const testing::Scene scene;
  std::mt19937 rng(17);
  std::uniform_real_distribution<double> ua(-1.2, 1.2), ut(-100.0, 100.0);
  for (int k = 0; k < 2; ++k) {
    const ConeProjector projector(scene.views[k]);
    for (int trial = 0; trial < 20; ++trial) {
      double pose[6], R0[9];
      scene.RandomPose(rng, pose);
      RotationFromEulerZYX(pose, R0);
      const double x[6] = {ua(rng), ua(rng), ua(rng), pose[3], pose[4], pose[5]};
      const int index = (3 * trial) % scene.n;
      const double target[2] = {ut(rng), ut(rng)}, sw = 1.3;
      const ViewResidual analytic(&projector, R0, scene.landmarks.data(), &index, target, &sw, 1);
      ceres::AutoDiffCostFunction<AutoDiffViewResidual, 2, 6> automatic(new AutoDiffViewResidual{
          &scene.views[k], R0, scene.landmarks.data() + 3 * index, target, sw});
      const double* params[1] = {x};
      double ra[2], rb[2], ja[12], jb[12];
      double* jac_a[1] = {ja};
      double* jac_b[1] = {jb};
      ASSERT_TRUE(analytic.Evaluate(params, ra, jac_a));
      ASSERT_TRUE(automatic.Evaluate(params, rb, jac_b));
      for (int i = 0; i < 2; ++i) EXPECT_NEAR(ra[i], rb[i], 1e-9 * (1 + std::fabs(rb[i])));
      for (int i = 0; i < 12; ++i) EXPECT_NEAR(ja[i], jb[i], 1e-8 * (1 + std::fabs(jb[i]))) << i;
    }
  }
}

}  // namespace
}  // namespace fluororeg
