// Screening of the mirror cases: a small Levenberg-Marquardt on the same cost (residuals and
// loss) that Ceres solves, without Ceres' per-solve set-up (about 25 us per solve, more than
// a whole screened frame's LM iterations). A few iterations tell the contending mirror cases
// from the far worse ones; the contenders go on to convergence with it, and Ceres solves a
// contender the small LM did not bring to convergence (frame_solver.cc). Not installed.
#pragma once

#include <ceres/ceres.h>

#include <vector>

#include "fluororeg/geometry.h"

namespace fluororeg {
namespace internal {

// The registration cost of one mirror case, laid out for a fast evaluation of the normal
// equations: the landmarks of each view in groups of four (one SIMD lane each), so that the
// projections, their derivatives and the sums J^T J, J^T r are computed four landmarks at a
// time, without storing the Jacobian. Same residuals as ViewResidual (residual.h):
//   r_ik = sqrt(w_ik) (P_k(R X_i + tau) - target_ik)  mm,   R = exp([phi]x) R0,
// and the same loss: rho per landmark and view (per_landmark, the robust losses) or per view
// (the Frobenius loss, or none). test_jacobians.cc checks it against ViewResidual.
class ScreeningCost {
 public:
  // projectors [2] (kept by pointer), R0 [9] row-major (copied); landmarks [N, 3] mm indexed by
  // index [k]; per view k: targets[k] [k, 2] mm and sqrt_w[k] [k] (copied). loss: nullptr
  // means rho(s) = s; borrowed.
  void Reset(const ConeProjector* projectors, const double* R0, const double* landmarks,
             const int* index, int k, const double* const targets[2],
             const double* const sqrt_w[2], const ceres::LossFunction* loss, bool per_landmark);

  // At x [6] = (phi rad, tau mm): cost = 1/2 sum_b rho(s_b) over the blocks b (landmark-view
  // pairs or views, s_b their squared residual norm), H [6, 6] column-major (upper triangle
  // written) = sum_b rho'(s_b) J_b^T J_b and g [6] = sum_b rho'(s_b) J_b^T r_b: the
  // Gauss-Newton system with robust losses reweighted. Returns false when a landmark is not in
  // front of a source (outputs undefined).
  bool Evaluate(const double* x, double* cost, double* H, double* g) const;

  int num_landmarks() const { return k_; }

 private:
  const ConeProjector* projectors_ = nullptr;
  double R0_[9];
  const ceres::LossFunction* loss_ = nullptr;
  bool per_landmark_ = false;
  int k_ = 0, groups_ = 0;
  // [2 views][groups_][kFields][4 lanes]: X, Y, Z (model, mm), target u, v (mm), sqrt(w)
  // (0 in the padding lanes past k_).
  std::vector<double> lanes_;
};

// Minimises the cost over x [6] (in and out) for at most `iterations` LM steps (accepted or
// not). Robust losses enter as iteratively reweighted least squares (weight rho'(s) per block).
// Returns the number of steps taken, or -1 when the cost cannot be evaluated at the start (a
// landmark behind a source; x is then unchanged). Stops early, like Ceres, when an accepted
// step lowers the cost by at most function_tolerance (relative), or when a step is at most
// parameter_tolerance (relative to |x|) or its predicted decrease at most function_tolerance
// (relative); `converged` (optional) then says true, unless that step was heavily damped
// (many steps rejected before it: a stall, not a minimum). False when the limit stopped it.
int ScreenSolve(const ScreeningCost& cost, int iterations, double function_tolerance,
                double parameter_tolerance, double* x, bool* converged = nullptr);

}  // namespace internal
}  // namespace fluororeg
