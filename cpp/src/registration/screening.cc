// A small Levenberg-Marquardt for the 6-DOF screening solves (see screening.h).
#include "screening.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>

namespace fluororeg {
namespace internal {

namespace {

using Matrix6 = Eigen::Matrix<double, 6, 6>;
using Vector6 = Eigen::Matrix<double, 6, 1>;

// cost = 1/2 sum rho(s_b); H = sum rho'(s_b) J_b^T J_b (upper triangle), g = sum rho'(s_b) J_b^T r_b.
bool Evaluate(const std::vector<std::unique_ptr<ViewResidual>>& blocks, int num_blocks,
              const ceres::LossFunction* loss, const double* x, double* cost, Matrix6* H,
              Vector6* g) {
  thread_local std::vector<double> r, J;
  const double* params[1] = {x};
  *cost = 0;
  H->setZero();
  g->setZero();
  for (int b = 0; b < num_blocks; ++b) {
    const ViewResidual& block = *blocks[b];
    const int m = block.num_residuals();
    if (static_cast<int>(r.size()) < m) {
      r.resize(m);
      J.resize(6 * m);
    }
    double* jac[1] = {J.data()};
    if (!block.Evaluate(params, r.data(), jac)) return false;
    double s = 0;
    for (int i = 0; i < m; ++i) s += r[i] * r[i];
    double rho[3] = {s, 1.0, 0.0};
    if (loss != nullptr) loss->Evaluate(s, rho);
    *cost += 0.5 * rho[0];
    const double w = rho[1];
    double h[6][6] = {}, gb[6] = {};  // local sums (vectorisable, no aliasing with J and r)
    for (int i = 0; i < m; ++i) {
      const double* Ji = J.data() + 6 * i;
      for (int a = 0; a < 6; ++a) {
        gb[a] += Ji[a] * r[i];
        for (int c = a; c < 6; ++c) h[a][c] += Ji[a] * Ji[c];
      }
    }
    for (int a = 0; a < 6; ++a) {
      (*g)(a) += w * gb[a];
      for (int c = a; c < 6; ++c) (*H)(a, c) += w * h[a][c];
    }
  }
  return std::isfinite(*cost);
}

}  // namespace

int ScreenSolve(const std::vector<std::unique_ptr<ViewResidual>>& blocks, int num_blocks,
                const ceres::LossFunction* loss, int iterations, double function_tolerance,
                double parameter_tolerance, double* x) {
  double cost;
  Matrix6 H;
  Vector6 g;
  if (!Evaluate(blocks, num_blocks, loss, x, &cost, &H, &g)) return -1;
  double lambda = 1e-4;  // damping relative to diag(H) (Ceres' initial trust region 1e4)
  int it = 0;
  while (it < iterations) {
    const Matrix6 Hs = H.selfadjointView<Eigen::Upper>();
    Matrix6 A = Hs;
    for (int a = 0; a < 6; ++a) A(a, a) += lambda * std::max(H(a, a), 1e-12);
    const Vector6 dx = A.ldlt().solve(-g);
    // Converged: the step is tiny, or its predicted decrease of the cost is (Ceres' criteria).
    const double x_norm = Eigen::Map<const Vector6>(x).norm();
    const double predicted = -(g.dot(dx) + 0.5 * dx.dot(Hs * dx));
    if (!dx.allFinite() || dx.norm() <= parameter_tolerance * (x_norm + parameter_tolerance) ||
        predicted <= function_tolerance * cost)
      break;
    ++it;
    double x_new[6], cost_new;
    for (int a = 0; a < 6; ++a) x_new[a] = x[a] + dx(a);
    Matrix6 H_new;
    Vector6 g_new;
    if (Evaluate(blocks, num_blocks, loss, x_new, &cost_new, &H_new, &g_new) && cost_new < cost) {
      std::copy(x_new, x_new + 6, x);
      const bool converged = cost - cost_new <= function_tolerance * cost;
      cost = cost_new;
      H = H_new;
      g = g_new;
      lambda = std::max(lambda / 3.0, 1e-12);
      if (converged) break;
    } else {
      lambda = std::min(lambda * 4.0, 1e16);
    }
  }
  return it;
}

}  // namespace internal
}  // namespace fluororeg
