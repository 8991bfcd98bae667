// The registration's cost functions (see residual.h).
#include "residual.h"

#include <cmath>

#include "fluororeg/so3.h"

namespace fluororeg {
namespace internal {

ViewResidual::ViewResidual(const ConeProjector* projector, const double* R0,
                           const double* landmarks, const int* index, const double* targets,
                           const double* sqrt_w, int k) {
  mutable_parameter_block_sizes()->assign(1, 6);
  Reset(projector, R0, landmarks, index, targets, sqrt_w, k);
}

void ViewResidual::Reset(const ConeProjector* projector, const double* R0,
                         const double* landmarks, const int* index, const double* targets,
                         const double* sqrt_w, int k, RotationCache* cache) {
  cache_ = cache;
  if (cache_ != nullptr) cache_->R0 = nullptr;  // R0's values may differ at the same address
  projector_ = projector;
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
  double* J = (jacobians != nullptr) ? jacobians[0] : nullptr;
  RotationCache local;
  RotationCache& c = cache_ != nullptr ? *cache_ : local;
  if (c.R0 != R0_ || c.phi[0] != phi[0] || c.phi[1] != phi[1] || c.phi[2] != phi[2]) {
    double E[9];
    ExpSO3(phi, E);
    MultiplyRotations(E, R0_, c.R);
    for (int a = 0; a < 3; ++a) c.phi[a] = phi[a];
    c.R0 = R0_;
    c.has_jl = false;
  }
  if (J != nullptr && !c.has_jl) {
    LeftJacobianSO3(phi, c.Jl);
    c.has_jl = true;
  }
  const double* R = c.R;
  const double* Jl = c.Jl;
  const ConeProjector& g = *projector_;
  for (int i = 0; i < k_; ++i) {
    const double* X = landmarks_ + 3 * index_[i];
    const double y[3] = {R[0] * X[0] + R[1] * X[1] + R[2] * X[2],
                         R[3] * X[0] + R[4] * X[1] + R[5] * X[2],
                         R[6] * X[0] + R[7] * X[1] + R[8] * X[2]};  // R X
    double pu, pv, qu, qv, inv;
    if (!g.Project(Vec3<double>{y[0] + t[0], y[1] + t[1], y[2] + t[2]}, &pu, &pv, &qu, &qv, &inv))
      return false;  // not in front of the source
    const double sw = sqrt_w_[i];
    residuals[2 * i] = sw * (pu - targets_[2 * i]);
    residuals[2 * i + 1] = sw * (pv - targets_[2 * i + 1]);
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
}  // namespace fluororeg
