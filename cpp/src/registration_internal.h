// Building blocks of the registration solver (not installed; the tests check them).
#pragma once

#include <ceres/ceres.h>

#include <vector>

#include "fluororeg/geometry.h"

namespace fluororeg {
namespace internal {

// Pose state inside the solver: x [12] = R row-major [9], tau [3] mm. Tangent [6] =
// (w [3] rad, dtau [3] mm): Plus(x, d) = (exp([w]x) R, tau + dtau).
class PoseManifold final : public ceres::Manifold {
 public:
  int AmbientSize() const override { return 12; }
  int TangentSize() const override { return 6; }
  bool Plus(const double* x, const double* delta, double* x_plus_delta) const override;
  bool PlusJacobian(const double* x, double* jacobian) const override;  // [12, 6]
  bool RightMultiplyByPlusJacobian(const double* x, int num_rows, const double* ambient_matrix,
                                   double* tangent_matrix) const override;
  bool Minus(const double* y, const double* x, double* y_minus_x) const override;
  bool MinusJacobian(const double* x, double* jacobian) const override;  // [6, 12]
};

// exp([w]x) [9] row-major (Rodrigues) and its inverse (angle < pi).
void ExpSO3(const double* w, double* R);
void LogSO3(const double* R, double* w);

// Per-view geometry precomputed for fast projection.
struct ViewGeometry {
  double S[3], u[3], v[3], n[3];  // source, detector axes, normal u x v
  double sd;                      // n . (D - S)
  double a_u, a_v;                // u . (S - D), v . (S - D)
  explicit ViewGeometry(const ConeView& view);
};

// Residuals of k landmarks in one view: [2k] = sqrt(w_i) (P(R X_i + tau) - target_i) mm, one
// parameter block: the pose state [12] (PoseManifold). Analytic Jacobian [2k, 12]. Returns
// false when a landmark is not in front of the source. Pointers are borrowed.
class ViewResidual final : public ceres::CostFunction {
 public:
  // landmarks [N, 3] (indexed by `index`); index [k]; targets [k, 2] mm; sqrt_w [k].
  ViewResidual(const ViewGeometry* geometry, const double* landmarks, const int* index,
               const double* targets, const double* sqrt_w, int k);
  ViewResidual() : ViewResidual(nullptr, nullptr, nullptr, nullptr, nullptr, 0) {}
  // Re-point at other data (lets a pool of cost functions be reused across solves).
  void Reset(const ViewGeometry* geometry, const double* landmarks, const int* index,
             const double* targets, const double* sqrt_w, int k);
  bool Evaluate(double const* const* parameters, double* residuals,
                double** jacobians) const override;

 private:
  const ViewGeometry* g_;
  const double* landmarks_;
  const int* index_;
  const double* targets_;
  const double* sqrt_w_;
  int k_;
};

// rho(s) = 2 (sqrt(s + eps^2) - eps): with Ceres' 1/2 factor a residual block contributes
// sqrt(s + eps^2) - eps ~ |e|, so one block per view gives the paper's sum of Frobenius
// norms. eps (mm) keeps the derivatives finite at a zero residual.
class FrobeniusLoss final : public ceres::LossFunction {
 public:
  explicit FrobeniusLoss(double eps_mm = 1e-9) : eps_(eps_mm) {}
  void Evaluate(double s, double rho[3]) const override;

 private:
  double eps_;
};

}  // namespace internal
}  // namespace fluororeg
