// A small Levenberg-Marquardt for the 6-DOF screening solves, over a cost evaluated four
// landmarks at a time (see screening.h).
#include "screening.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/cpu_clones.h"
#include "fluororeg/so3.h"

namespace fluororeg {
namespace internal {

namespace {

using Matrix6 = Eigen::Matrix<double, 6, 6>;
using Vector6 = Eigen::Matrix<double, 6, 1>;

// Four doubles, one landmark each (GCC/Clang vector extension: element-wise arithmetic, a
// scalar operand is broadcast). The helpers below are internal and inlined, so GCC's note
// that passing such vectors without AVX changes the ABI does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
using Lanes = double __attribute__((vector_size(32)));
constexpr int kLanes = 4;
constexpr int kFields = 6;  // X, Y, Z, target u, target v, sqrt(w)

Lanes Load(const double* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Sum of the lanes in a fixed order.
double Sum(Lanes v) { return (v[0] + v[1]) + (v[2] + v[3]); }

// Sums of one view over its landmarks at rotation R [9] and translation tau [3], in the
// rotation-increment space: each residual row is J' = [y x grad, grad] (y = R X, grad the
// row's gradient w.r.t. the world point), the solver's row is J' diag(Jl, I) (residual.h).
struct ViewSums {
  double h[21];  // sum w J'^T J' (upper triangle, row by row)
  double gr[6];  // sum w J'^T r
  double s;      // sum |r|^2 (per-view loss), or
  double cost;   // 1/2 sum rho(|r_i|^2) (per-landmark loss)
};

// One view: lanes [groups][kFields][kLanes] (ScreeningCost's layout), k landmarks;
// landmark_loss: the loss per landmark (nullptr: per-view or none, weight 1 here).
FLUORO_CPU_CLONES bool SumView(const ConeProjector& p, const double* R, const double* tau,
                               const double* lanes, int groups, int k,
                               const ceres::LossFunction* landmark_loss, ViewSums* out) {
  Lanes H[21], G[6], S;
  for (int a = 0; a < 21; ++a) H[a] = Lanes{0, 0, 0, 0};
  for (int a = 0; a < 6; ++a) G[a] = Lanes{0, 0, 0, 0};
  S = Lanes{0, 0, 0, 0};
  double cost = 0;
  const double ox = tau[0] - p.S[0], oy = tau[1] - p.S[1], oz = tau[2] - p.S[2];
  for (int q = 0; q < groups; ++q) {
    const double* f = lanes + q * kFields * kLanes;
    const Lanes X = Load(f), Y = Load(f + 4), Z = Load(f + 8);
    const Lanes tu = Load(f + 12), tv = Load(f + 16), sw = Load(f + 20);
    const Lanes y0 = R[0] * X + R[1] * Y + R[2] * Z;
    const Lanes y1 = R[3] * X + R[4] * Y + R[5] * Z;
    const Lanes y2 = R[6] * X + R[7] * Y + R[8] * Z;
    const Lanes dx = y0 + ox, dy = y1 + oy, dz = y2 + oz;  // R X + tau - S
    const Lanes nd = p.n[0] * dx + p.n[1] * dy + p.n[2] * dz;
    const Lanes front = nd * p.sd;
    for (int l = 0; l < kLanes; ++l) {
      if (!(front[l] > 0)) return false;  // not in front of the source (see ConeProjector)
    }
    const Lanes inv = 1.0 / nd;
    const Lanes qu = (p.u[0] * dx + p.u[1] * dy + p.u[2] * dz) * inv;
    const Lanes qv = (p.v[0] * dx + p.v[1] * dy + p.v[2] * dz) * inv;
    const Lanes ru = sw * ((p.a_u + p.sd * qu) - tu);
    const Lanes rv = sw * ((p.a_v + p.sd * qv) - tv);
    const Lanes fs = sw * p.sd * inv;
    const Lanes gu0 = fs * (p.u[0] - qu * p.n[0]), gu1 = fs * (p.u[1] - qu * p.n[1]),
                gu2 = fs * (p.u[2] - qu * p.n[2]);
    const Lanes gv0 = fs * (p.v[0] - qv * p.n[0]), gv1 = fs * (p.v[1] - qv * p.n[1]),
                gv2 = fs * (p.v[2] - qv * p.n[2]);
    const Lanes ju[6] = {y1 * gu2 - y2 * gu1, y2 * gu0 - y0 * gu2, y0 * gu1 - y1 * gu0,
                         gu0, gu1, gu2};
    const Lanes jv[6] = {y1 * gv2 - y2 * gv1, y2 * gv0 - y0 * gv2, y0 * gv1 - y1 * gv0,
                         gv0, gv1, gv2};
    const Lanes s = ru * ru + rv * rv;
    Lanes w = Lanes{1, 1, 1, 1};
    if (landmark_loss != nullptr) {
      for (int l = 0; l < kLanes; ++l) {
        if (q * kLanes + l >= k) {  // padding lane: no block
          w[l] = 0;
          continue;
        }
        double rho[3];
        landmark_loss->Evaluate(s[l], rho);
        cost += 0.5 * rho[0];
        w[l] = rho[1];
      }
    } else {
      S += s;
    }
    int e = 0;
    for (int a = 0; a < 6; ++a) {
      const Lanes wu = w * ju[a], wv = w * jv[a];
      G[a] += wu * ru + wv * rv;
      for (int c = a; c < 6; ++c, ++e) H[e] += wu * ju[c] + wv * jv[c];
    }
  }
  for (int a = 0; a < 21; ++a) out->h[a] = Sum(H[a]);
  for (int a = 0; a < 6; ++a) out->gr[a] = Sum(G[a]);
  out->s = Sum(S);
  out->cost = cost;
  return true;
}

}  // namespace

void ScreeningCost::Reset(const ConeProjector* projectors, const double* R0,
                          const double* landmarks, const int* index, int k,
                          const double* const targets[2], const double* const sqrt_w[2],
                          const ceres::LossFunction* loss, bool per_landmark) {
  projectors_ = projectors;
  std::copy(R0, R0 + 9, R0_);
  loss_ = loss;
  per_landmark_ = per_landmark;
  k_ = k;
  groups_ = (k + kLanes - 1) / kLanes;
  lanes_.resize(2 * static_cast<size_t>(groups_) * kFields * kLanes);  // every lane written below
  for (int v = 0; v < 2; ++v) {
    for (int i = 0; i < groups_ * kLanes; ++i) {
      // Padding lanes repeat landmark 0 (in front of the source whenever it is) with weight 0.
      const int j = i < k ? i : 0;
      double* f = lanes_.data() + ((v * groups_ + i / kLanes) * kFields) * kLanes + i % kLanes;
      const double* X = landmarks + 3 * index[j];
      const double field[kFields] = {X[0], X[1], X[2], targets[v][2 * j], targets[v][2 * j + 1],
                                     i < k ? sqrt_w[v][j] : 0.0};
      for (int m = 0; m < kFields; ++m) f[m * kLanes] = field[m];
    }
  }
}

bool ScreeningCost::Evaluate(const double* x, double* cost, double* H, double* g) const {
  double E[9], R[9], Jl[9];
  ExpSO3(x, E);
  MultiplyRotations(E, R0_, R);
  LeftJacobianSO3(x, Jl);
  double h[6][6] = {}, gr[6] = {};  // rotation-increment space, both views
  *cost = 0;
  for (int v = 0; v < 2; ++v) {
    ViewSums sums;
    if (!SumView(projectors_[v], R, x + 3,
                 lanes_.data() + static_cast<size_t>(v) * groups_ * kFields * kLanes, groups_, k_,
                 per_landmark_ ? loss_ : nullptr, &sums))
      return false;
    double w = 1.0;
    if (per_landmark_) {
      *cost += sums.cost;
    } else {
      double rho[3] = {sums.s, 1.0, 0.0};
      if (loss_ != nullptr) loss_->Evaluate(sums.s, rho);
      *cost += 0.5 * rho[0];
      w = rho[1];
    }
    for (int a = 0, e = 0; a < 6; ++a) {
      gr[a] += w * sums.gr[a];
      for (int c = a; c < 6; ++c, ++e) h[a][c] += w * sums.h[e];
    }
  }
  for (int a = 0; a < 6; ++a)
    for (int c = 0; c < a; ++c) h[a][c] = h[c][a];
  // To the solver's parameters: J = J' T with T = diag(Jl, I), so H = T^T H' T and
  // g = T^T g': the rotation rows and columns are multiplied by Jl^T, Jl.
  double hj[3][6];  // Jl^T (rotation rows of H')
  for (int b = 0; b < 3; ++b) {
    for (int c = 0; c < 6; ++c) hj[b][c] = Jl[b] * h[0][c] + Jl[3 + b] * h[1][c] + Jl[6 + b] * h[2][c];
    g[b] = Jl[b] * gr[0] + Jl[3 + b] * gr[1] + Jl[6 + b] * gr[2];
    g[3 + b] = gr[3 + b];
  }
  for (int b = 0; b < 3; ++b) {
    for (int d = 0; d < 3; ++d) {
      const double v = hj[b][0] * Jl[d] + hj[b][1] * Jl[3 + d] + hj[b][2] * Jl[6 + d];
      H[b + 6 * d] = v;                 // rotation x rotation
      H[b + 6 * (3 + d)] = hj[b][3 + d];  // rotation x translation
      H[3 + d + 6 * b] = hj[b][3 + d];    // its transpose
      H[3 + b + 6 * (3 + d)] = h[3 + b][3 + d];
    }
  }
  return std::isfinite(*cost);
}

int ScreenSolve(const ScreeningCost& problem, int iterations, double function_tolerance,
                double parameter_tolerance, double* x, bool* converged) {
  if (converged != nullptr) *converged = false;
  double cost;
  Matrix6 H;
  Vector6 g;
  if (!problem.Evaluate(x, &cost, H.data(), g.data())) return -1;
  double lambda = 1e-4;  // damping relative to diag(H) (Ceres' initial trust region 1e4)
  int it = 0;
  // Stopped by a tolerance with the model trusted (damping below kTrusted: the steps are close
  // to Gauss-Newton ones); a stop after many rejected steps is not convergence.
  constexpr double kTrusted = 1.0;
  while (it < iterations) {
    Matrix6 A = H;
    for (int a = 0; a < 6; ++a) A(a, a) += lambda * std::max(H(a, a), 1e-12);
    const Vector6 dx = A.ldlt().solve(-g);
    // Converged: the step is tiny, or its predicted decrease of the cost is (Ceres' criteria).
    const double x_norm = Eigen::Map<const Vector6>(x).norm();
    const double predicted = -(g.dot(dx) + 0.5 * dx.dot(H * dx));
    if (!dx.allFinite()) break;
    if (dx.norm() <= parameter_tolerance * (x_norm + parameter_tolerance) ||
        predicted <= function_tolerance * cost) {
      if (converged != nullptr) *converged = lambda < kTrusted;
      break;
    }
    ++it;
    double x_new[6], cost_new;
    for (int a = 0; a < 6; ++a) x_new[a] = x[a] + dx(a);
    Matrix6 H_new;
    Vector6 g_new;
    if (problem.Evaluate(x_new, &cost_new, H_new.data(), g_new.data()) && cost_new < cost) {
      std::copy(x_new, x_new + 6, x);
      const bool small_decrease = cost - cost_new <= function_tolerance * cost;
      cost = cost_new;
      H = H_new;
      g = g_new;
      lambda = std::max(lambda / 3.0, 1e-12);
      if (small_decrease) {
        if (converged != nullptr) *converged = true;
        break;
      }
    } else {
      lambda = std::min(lambda * 4.0, 1e16);
    }
  }
  return it;
}

}  // namespace internal
}  // namespace fluororeg
