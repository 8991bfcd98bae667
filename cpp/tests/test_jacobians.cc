// Analytic Jacobians of the registration solver against numeric differentiation
// (ceres::GradientChecker) and the pose manifold's consistency.
#include <ceres/ceres.h>
#include <ceres/gradient_checker.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "registration_internal.h"
#include "synthetic.h"

namespace fluororeg {
namespace {

using internal::PoseManifold;
using internal::ViewGeometry;
using internal::ViewResidual;

void StateFromPose(const double* pose, double* x) {
  RotationFromEulerZYX(pose, x);
  for (int i = 0; i < 3; ++i) x[9 + i] = pose[3 + i];
}

TEST(Jacobians, ViewResidualMatchesNumericDiff) {
  const testing::Scene scene;
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> uw(0.2, 2.0), ut(-200.0, 200.0);
  const PoseManifold manifold;
  const std::vector<const ceres::Manifold*> manifolds = {&manifold};
  for (int k = 0; k < 2; ++k) {
    const ViewGeometry g(scene.views[k]);
    for (int trial = 0; trial < 10; ++trial) {
      double pose[6], x[12];
      scene.RandomPose(rng, pose);
      StateFromPose(pose, x);
      const int m = 1 + trial % 7;
      std::vector<int> index(m);
      std::vector<double> targets(2 * m), sqrt_w(m);
      for (int i = 0; i < m; ++i) {
        index[i] = (5 * i + trial) % scene.n;
        targets[2 * i] = ut(rng);
        targets[2 * i + 1] = ut(rng);
        sqrt_w[i] = uw(rng);
      }
      const ViewResidual cost(&g, scene.landmarks.data(), index.data(), targets.data(),
                              sqrt_w.data(), m);
      ceres::NumericDiffOptions nd;
      ceres::GradientChecker checker(&cost, &manifolds, nd);
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
  const double target[2] = {0, 0}, sw = 1;
  const ViewResidual cost(&g, scene.landmarks.data(), &index, target, &sw, 1);
  double x[12] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  // Put the model 100 mm behind the F1 source.
  for (int i = 0; i < 3; ++i)
    x[9 + i] = scene.views[0].source[i] -
               100.0 * (scene.views[0].detector_centre[i] - scene.views[0].source[i]) / 1100.0;
  const double* params[1] = {x};
  double r[2];
  EXPECT_FALSE(cost.Evaluate(params, r, nullptr));
}

TEST(Jacobians, ManifoldPlusJacobianMatchesNumericDiff) {
  const PoseManifold m;
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(-3.0, 3.0);
  for (int trial = 0; trial < 10; ++trial) {
    const double pose[6] = {u(rng), u(rng) / 2, u(rng), 10 * u(rng), 10 * u(rng), 10 * u(rng)};
    double x[12];
    StateFromPose(pose, x);
    double J[72];
    ASSERT_TRUE(m.PlusJacobian(x, J));
    const double h = 1e-6;
    for (int c = 0; c < 6; ++c) {
      double dp[6] = {0}, dm[6] = {0}, xp[12], xm[12];
      dp[c] = h;
      dm[c] = -h;
      m.Plus(x, dp, xp);
      m.Plus(x, dm, xm);
      for (int r = 0; r < 12; ++r) EXPECT_NEAR(J[6 * r + c], (xp[r] - xm[r]) / (2 * h), 1e-8);
    }
    // RightMultiplyByPlusJacobian == A * PlusJacobian.
    double A[24], T[12];
    for (double& a : A) a = u(rng);
    ASSERT_TRUE(m.RightMultiplyByPlusJacobian(x, 2, A, T));
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 6; ++c) {
        double s = 0;
        for (int k = 0; k < 12; ++k) s += A[12 * r + k] * J[6 * k + c];
        EXPECT_NEAR(T[6 * r + c], s, 1e-12);
      }
    // MinusJacobian * PlusJacobian == I and Minus(Plus(x, d), x) == d.
    double Jm[72];
    ASSERT_TRUE(m.MinusJacobian(x, Jm));
    for (int r = 0; r < 6; ++r)
      for (int c = 0; c < 6; ++c) {
        double s = 0;
        for (int k = 0; k < 12; ++k) s += Jm[12 * r + k] * J[6 * k + c];
        EXPECT_NEAR(s, r == c ? 1.0 : 0.0, 1e-12);
      }
    const double d[6] = {0.3 * u(rng) / 3, 0.2, -0.4, 1.0, -2.0, 3.0};
    double y[12], back[6];
    m.Plus(x, d, y);
    m.Minus(y, x, back);
    for (int i = 0; i < 6; ++i) EXPECT_NEAR(back[i], d[i], 1e-12);
    // Plus keeps R orthonormal.
    double RRt[9];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        RRt[3 * i + j] = y[3 * i] * y[3 * j] + y[3 * i + 1] * y[3 * j + 1] + y[3 * i + 2] * y[3 * j + 2];
    for (int i = 0; i < 9; ++i) EXPECT_NEAR(RRt[i], i % 4 == 0 ? 1.0 : 0.0, 1e-12);
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
  double pose[6], x[12];
  scene.RandomPose(rng, pose);
  StateFromPose(pose, x);
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
    costs.push_back(std::make_unique<ViewResidual>(geos.back().get(), scene.landmarks.data(),
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

}  // namespace
}  // namespace fluororeg
