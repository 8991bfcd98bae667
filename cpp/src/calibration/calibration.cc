// Ceres refinement of a cone view from bead correspondences (see calibration.h).
#include "fluororeg/calibration.h"

#include <ceres/ceres.h>
#include <ceres/rotation.h>

#include <cmath>
#include <stdexcept>
#include <string>

namespace fluororeg {
namespace {

// Reprojection of one bead. Parameters: source S [3], intensifier centre D [3], rotation
// omega [3] (angle-axis) applied to the initial axes u0, v0 (n0 = u0 x v0).
struct BeadCost {
  BeadCost(const ConeView& v0, const double* X, const double* xy) : view(v0) {
    for (int i = 0; i < 3; ++i) point[i] = X[i];
    obs[0] = xy[0];
    obs[1] = xy[1];
  }

  template <typename T>
  bool operator()(const T* S, const T* D, const T* omega, T* residual) const {
    const T u0[3] = {T(view.u[0]), T(view.u[1]), T(view.u[2])};
    const T v0[3] = {T(view.v[0]), T(view.v[1]), T(view.v[2])};
    T u[3], v[3];
    ceres::AngleAxisRotatePoint(omega, u0, u);
    ceres::AngleAxisRotatePoint(omega, v0, v);
    const T n[3] = {u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2],
                    u[0] * v[1] - u[1] * v[0]};
    T d[3], ds[3];
    for (int i = 0; i < 3; ++i) {
      d[i] = T(point[i]) - S[i];
      ds[i] = D[i] - S[i];
    }
    const T sd = n[0] * ds[0] + n[1] * ds[1] + n[2] * ds[2];
    const T nd = n[0] * d[0] + n[1] * d[1] + n[2] * d[2];
    if (!(nd * sd > T(0))) return false;  // behind the source: reject this step
    const T t = sd / nd;
    T pd[3];  // P - D, with P = S + t d
    for (int i = 0; i < 3; ++i) pd[i] = t * d[i] - ds[i];
    const T a = u[0] * pd[0] + u[1] * pd[1] + u[2] * pd[2];
    const T b = v[0] * pd[0] + v[1] * pd[1] + v[2] * pd[2];
    residual[0] = a / T(view.pitch_u) + T(0.5 * (view.width - 1)) - T(obs[0]);
    residual[1] = b / T(view.pitch_v) + T(0.5 * (view.height - 1)) - T(obs[1]);
    return true;
  }

  ConeView view;
  double point[3];
  double obs[2];
};

void CheckFinite(const double* p, int count, const char* name) {
  for (int i = 0; i < count; ++i) {
    if (!std::isfinite(p[i])) {
      throw std::invalid_argument(std::string(name) + " holds a non-finite value at index " +
                                  std::to_string(i));
    }
  }
}

double Rms(const std::vector<double>& r) {
  double s = 0;
  for (double x : r) s += x * x;
  return r.empty() ? 0.0 : std::sqrt(s / (r.size() / 2));
}

}  // namespace

std::vector<double> ReprojectionResiduals(const ConeView& view, const double* points_world,
                                          const double* pixels, int n) {
  std::vector<double> out(2 * static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const Vec3<double> X{points_world[3 * i], points_world[3 * i + 1], points_world[3 * i + 2]};
    double px, py;
    if (ProjectCone(view, X, &px, &py)) {
      out[2 * i] = px - pixels[2 * i];
      out[2 * i + 1] = py - pixels[2 * i + 1];
    } else {
      out[2 * i] = out[2 * i + 1] = std::nan("");
    }
  }
  return out;
}

ViewRefineResult RefineConeView(const ConeView& initial, const double* points_world,
                                const double* pixels, int n, const ViewRefineOptions& options) {
  if (n < 2) {
    throw std::invalid_argument("RefineConeView needs at least 2 beads, got " +
                                std::to_string(n));
  }
  CheckFinite(points_world, 3 * n, "points_world");
  CheckFinite(pixels, 2 * n, "pixels");
  const int free_params = 3 * (options.refine_source + options.refine_intensifier_centre +
                               options.refine_orientation);
  if (2 * n < free_params) {
    throw std::invalid_argument(std::to_string(n) + " beads give " + std::to_string(2 * n) +
                                " equations for " + std::to_string(free_params) +
                                " free parameters: add beads or hold more of the view fixed");
  }
  ViewRefineResult result;
  const std::vector<double> r0 = ReprojectionResiduals(initial, points_world, pixels, n);
  for (int i = 0; i < n; ++i) {
    if (std::isnan(r0[2 * i])) {
      throw std::invalid_argument("bead " + std::to_string(i) +
                                  " lies behind the source of the initial view");
    }
  }
  result.initial_rms_px = Rms(r0);

  double S[3], D[3], omega[3] = {0, 0, 0};
  for (int i = 0; i < 3; ++i) {
    S[i] = initial.source[i];
    D[i] = initial.intensifier_centre[i];
  }
  ceres::Problem problem;
  for (int i = 0; i < n; ++i) {
    auto* cost = new ceres::AutoDiffCostFunction<BeadCost, 2, 3, 3, 3>(
        new BeadCost(initial, points_world + 3 * i, pixels + 2 * i));
    ceres::LossFunction* loss =
        options.huber_px > 0 ? new ceres::HuberLoss(options.huber_px) : nullptr;
    problem.AddResidualBlock(cost, loss, S, D, omega);
  }
  if (!options.refine_source) problem.SetParameterBlockConstant(S);
  if (!options.refine_intensifier_centre) problem.SetParameterBlockConstant(D);
  if (!options.refine_orientation) problem.SetParameterBlockConstant(omega);

  ceres::Solver::Options so;
  so.linear_solver_type = ceres::DENSE_QR;
  so.max_num_iterations = options.max_iterations;
  so.function_tolerance = 1e-14;
  so.gradient_tolerance = 1e-14;
  so.parameter_tolerance = 1e-14;
  so.num_threads = 1;
  ceres::Solver::Summary summary;
  ceres::Solve(so, &problem, &summary);

  ConeView out = initial;
  double u[3], v[3];
  ceres::AngleAxisRotatePoint(omega, initial.u, u);
  ceres::AngleAxisRotatePoint(omega, initial.v, v);
  for (int i = 0; i < 3; ++i) {
    out.source[i] = S[i];
    out.intensifier_centre[i] = D[i];
    out.u[i] = u[i];
    out.v[i] = v[i];
  }
  result.view = out;
  result.residuals_px = ReprojectionResiduals(out, points_world, pixels, n);
  result.final_rms_px = Rms(result.residuals_px);
  result.iterations = static_cast<int>(summary.iterations.size());
  result.converged = summary.termination_type == ceres::CONVERGENCE;
  result.message = summary.message;
  return result;
}

}  // namespace fluororeg
