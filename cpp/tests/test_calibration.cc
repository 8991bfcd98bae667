// C++ tests of the cone-view refinement (fluororeg/calibration.h) and of the distortion
// correction's point maps (fluororeg/distortion.h).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "fluororeg/calibration.h"
#include "fluororeg/distortion.h"

namespace fluororeg {
namespace {

// A view looking along +y from S = (0, -1000, 0) at a detector 1400 mm away; u = +x,
// v = -z (rows grow downward), n = u x v = +y.
ConeView TrueView() {
  ConeView v;
  const double S[3] = {5, -1000, 12}, D[3] = {-3, 400, 8}, u[3] = {1, 0, 0}, vv[3] = {0, 0, -1};
  for (int i = 0; i < 3; ++i) {
    v.source[i] = S[i];
    v.intensifier_centre[i] = D[i];
    v.u[i] = u[i];
    v.v[i] = vv[i];
  }
  v.pitch_u = v.pitch_v = 0.3;
  v.width = v.height = 1024;
  return v;
}

// Beads of a 100 mm cube: corners, face centres and the centre.
std::vector<double> CubeBeads() {
  std::vector<double> p;
  for (int i = -1; i <= 1; ++i)
    for (int j = -1; j <= 1; ++j)
      for (int k = -1; k <= 1; ++k)
        if ((i != 0) + (j != 0) + (k != 0) != 2) {
          p.push_back(50.0 * i + 3);
          p.push_back(50.0 * j - 7);
          p.push_back(50.0 * k + 2);
        }
  return p;
}

std::vector<double> Project(const ConeView& v, const std::vector<double>& X, double noise,
                            unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g(0.0, noise);
  std::vector<double> xy;
  for (size_t i = 0; i < X.size() / 3; ++i) {
    double px, py;
    EXPECT_TRUE(ProjectCone(v, Vec3<double>{X[3 * i], X[3 * i + 1], X[3 * i + 2]}, &px, &py));
    xy.push_back(px + (noise > 0 ? g(rng) : 0.0));
    xy.push_back(py + (noise > 0 ? g(rng) : 0.0));
  }
  return xy;
}

TEST(Calibration, RefineRecoversPerturbedView) {
  const ConeView truth = TrueView();
  const std::vector<double> X = CubeBeads();
  const std::vector<double> xy = Project(truth, X, 0.0, 1);
  ConeView start = truth;
  start.source[0] += 15;
  start.source[1] -= 30;
  start.intensifier_centre[2] += 10;
  // Rotate the intensifier axes by about 1 degree about z.
  const double a = 0.017;
  start.u[0] = std::cos(a);
  start.u[1] = std::sin(a);
  const int n = static_cast<int>(X.size() / 3);
  const ViewRefineResult r = RefineConeView(start, X.data(), xy.data(), n, ViewRefineOptions());
  EXPECT_GT(r.initial_rms_px, 5.0);
  EXPECT_LT(r.final_rms_px, 1e-6);
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(r.view.source[i], truth.source[i], 1e-4);
    EXPECT_NEAR(r.view.intensifier_centre[i], truth.intensifier_centre[i], 1e-4);
    EXPECT_NEAR(r.view.u[i], truth.u[i], 1e-8);
    EXPECT_NEAR(r.view.v[i], truth.v[i], 1e-8);
  }
}

TEST(Calibration, SourceOnlyFromFourBeads) {
  const ConeView truth = TrueView();
  const std::vector<double> X = {0, 0, 0, 40, 20, 0, -30, 10, 35, 10, -25, -40};
  const std::vector<double> xy = Project(truth, X, 0.0, 2);
  ConeView start = truth;
  start.source[0] += 20;
  start.source[1] += 50;
  start.source[2] -= 15;
  ViewRefineOptions o;
  o.refine_intensifier_centre = false;
  o.refine_orientation = false;
  const ViewRefineResult r = RefineConeView(start, X.data(), xy.data(), 4, o);
  EXPECT_LT(r.final_rms_px, 1e-6);
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(r.view.source[i], truth.source[i], 1e-4);
    EXPECT_EQ(r.view.intensifier_centre[i], truth.intensifier_centre[i]);
  }
}

TEST(Calibration, NoiseGivesSmallResidual) {
  const ConeView truth = TrueView();
  const std::vector<double> X = CubeBeads();
  const std::vector<double> xy = Project(truth, X, 0.1, 3);
  const int n = static_cast<int>(X.size() / 3);
  const ViewRefineResult r = RefineConeView(truth, X.data(), xy.data(), n, ViewRefineOptions());
  EXPECT_LT(r.final_rms_px, 0.15);
  EXPECT_EQ(r.residuals_px.size(), 2u * n);
}

TEST(Calibration, RejectsBadInput) {
  const ConeView truth = TrueView();
  const std::vector<double> X = {0, 0, 0, 10, 0, 0};
  const std::vector<double> xy = {1, 2, 3, 4};
  EXPECT_THROW(RefineConeView(truth, X.data(), xy.data(), 1, ViewRefineOptions()),
               std::invalid_argument);
  // 2 beads, 4 equations < 9 free parameters.
  EXPECT_THROW(RefineConeView(truth, X.data(), xy.data(), 2, ViewRefineOptions()),
               std::invalid_argument);
  // A bead behind the source.
  const std::vector<double> Xb = {0, -2000, 0, 0, 0, 0, 10, 0, 0, 0, 0, 10, 5, 5, 5};
  const std::vector<double> xyb(10, 500.0);
  EXPECT_THROW(RefineConeView(truth, Xb.data(), xyb.data(), 5, ViewRefineOptions()),
               std::invalid_argument);
}

// A radial pincushion of order 3 (U(p) = p + k r^2 (p - c), normalised: the monomials
// x^3, x y^2, x^2 y, y^3), with no reverse polynomial: DistortPoints' Newton steps alone invert it.
TEST(Distortion, NewtonStepsInvertTheCorrection) {
  const int order = 3, terms = DistortionTerms(order);
  ASSERT_EQ(terms, 10);
  std::vector<double> coef(2 * terms, 0.0), inverse(2 * terms, 0.0);
  const double k = 20.0;  // px at the normalised radius 1
  // Degree 3 monomials in order: (a, b) = (3, 0), (2, 1), (1, 2), (0, 3), indices 6 .. 9.
  coef[2 * 6] = k;          // x: k x^3
  coef[2 * 8] = k;          // x: k x y^2
  coef[2 * 7 + 1] = k;      // y: k x^2 y
  coef[2 * 9 + 1] = k;      // y: k y^3
  DistortionPolynomial d;
  d.order = order;
  d.cx = 511.5;
  d.cy = 500.0;
  d.scale = 512.0;
  d.coef = coef.data();
  d.inverse_coef = inverse.data();
  std::mt19937 rng(4);
  std::uniform_real_distribution<double> px(0.0, 1023.0);
  std::vector<double> q(2 * 50), p(2 * 50), back(2 * 50);
  for (double& v : q) v = px(rng);
  DistortPoints(d, q.data(), 50, 8, p.data());
  UndistortPoints(d, p.data(), 50, back.data());
  for (int i = 0; i < 100; ++i) EXPECT_NEAR(back[i], q[i], 1e-9) << i;
  // The correction moves a point outwards by k r^2 times its normalised offset from the centre.
  const double r2 = std::pow((q[0] - d.cx) / d.scale, 2) + std::pow((q[1] - d.cy) / d.scale, 2);
  UndistortPoints(d, q.data(), 1, back.data());
  EXPECT_NEAR(back[0], q[0] + k * r2 * (q[0] - d.cx) / d.scale, 1e-9);
  DistortPoints(d, q.data(), 1, 0, back.data());  // no step: the reverse polynomial (here none)
  EXPECT_EQ(back[0], q[0]);
  EXPECT_EQ(back[1], q[1]);
}

TEST(Distortion, RejectsBadInput) {
  std::vector<double> coef(2 * DistortionTerms(2), 0.0);
  DistortionPolynomial d;
  d.order = 2;
  d.coef = coef.data();
  const double nan_point[2] = {1.0, std::nan("")}, point[2] = {1.0, 2.0};
  double out[2];
  EXPECT_THROW(UndistortPoints(d, nan_point, 1, out), std::invalid_argument);
  EXPECT_THROW(DistortPoints(d, point, 1, 4, out), std::invalid_argument);  // no inverse table
  d.inverse_coef = coef.data();
  EXPECT_THROW(DistortPoints(d, point, 1, -1, out), std::invalid_argument);
  d.scale = 0.0;
  EXPECT_THROW(UndistortPoints(d, point, 1, out), std::invalid_argument);
  d.scale = 1.0;
  d.order = kMaxDistortionOrder + 1;
  EXPECT_THROW(UndistortPoints(d, point, 1, out), std::invalid_argument);
}

}  // namespace
}  // namespace fluororeg
