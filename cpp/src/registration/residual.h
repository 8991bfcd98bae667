// The registration's cost: residuals of one view with analytic Jacobians, and the loss that
// turns a view's block into the paper's Frobenius norm (not installed; the tests check them).
//
// Pose parameters inside the solver: x [6] = (phi [3] rad, tau [3] mm) with
// R = exp([phi]x) R0, R0 a fixed reference rotation (the initial one). The rotation vector is
// an increment about the start, singular only 2 pi away from it, so the solver never meets
// gimbal lock; poses are reported as Euler angles afterwards (fluororeg/so3.h).
#pragma once

#include <ceres/ceres.h>

#include "fluororeg/geometry.h"

namespace fluororeg {
namespace internal {

// R = exp([phi]x) R0 and the left Jacobian of exp at phi, kept for the last phi: the blocks of
// one solve (one per landmark and view with a robust loss) are evaluated at the same parameters
// one after another, so the rotation and its trigonometry are computed once per evaluation
// instead of once per block. One per thread (the solver's workspace); not thread-safe.
struct RotationCache {
  double phi[3];
  const double* R0 = nullptr;  // the R0 R was computed with (nullptr: empty)
  double R[9];
  double Jl[9];
  bool has_jl = false;
};

// Residuals of k landmarks in one view: [2k] = sqrt(w_i) (P(R X_i + tau) - target_i) mm, one
// parameter block x [6] = (phi, tau), R = exp([phi]x) R0, P = ConeProjector::Project (the
// projection of geometry.h). Analytic Jacobian [2k, 6]: the projection's derivative comes from
// ConeProjector's q and 1 / (n . d) (its formula is written here; test_jacobians.cc checks it
// against numeric differentiation). Returns false when a landmark is not in front of the
// source. Pointers are borrowed; `cache` (optional) is shared by the blocks of one thread.
class ViewResidual final : public ceres::CostFunction {
 public:
  // R0 [9] row-major; landmarks [N, 3] (indexed by `index`); index [k]; targets [k, 2] mm;
  // sqrt_w [k].
  ViewResidual(const ConeProjector* projector, const double* R0, const double* landmarks,
               const int* index, const double* targets, const double* sqrt_w, int k);
  ViewResidual() : ViewResidual(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0) {}
  // Re-point at other data (lets a pool of cost functions be reused across solves).
  void Reset(const ConeProjector* projector, const double* R0, const double* landmarks,
             const int* index, const double* targets, const double* sqrt_w, int k,
             RotationCache* cache = nullptr);
  bool Evaluate(double const* const* parameters, double* residuals,
                double** jacobians) const override;

 private:
  const ConeProjector* projector_;
  const double* R0_;
  const double* landmarks_;
  const int* index_;
  const double* targets_;
  const double* sqrt_w_;
  int k_;
  RotationCache* cache_ = nullptr;
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
