// Starts for Eq. 2 from triangulated landmarks (TriangulatedPoses, registration.h): per frame
// and labelling, the midpoints of the two views' closest ray points, then the rigid fit of the
// model landmarks to them (Kabsch). NumPy reference: fluororeg._reference.registration.
// triangulated_poses_reference.
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "fluororeg/geometry.h"
#include "fluororeg/parallel.h"
#include "fluororeg/registration.h"

namespace fluororeg {

namespace {

constexpr int kFramesPerTask = 256;

// The world point [3] that pixel (x, y) of `view` shows on its intensifier.
void PixelToWorld(const ConeView& view, double x, double y, double* out) {
  double du, dv;
  PixelToIntensifierMm(view, x, y, &du, &dv);
  for (int i = 0; i < 3; ++i)
    out[i] = view.intensifier_centre[i] + du * view.u[i] + dv * view.v[i];
}

// One frame: rays [2][N][3] (direction from each source; NaN: not seen); labels[k][n] is the
// detection of view k that landmark n is seen as. The rigid fit R [9] row-major, t [3] and its
// RMS (mm) over the landmarks triangulated; false when fewer than min_points are.
bool FitLabelling(const double* landmarks, int n_landmarks, const ConeView views[2],
                  const std::vector<double> rays[2], const int* const labels[2], int min_points,
                  std::vector<double>* points, std::vector<char>* seen, double* R, double* t,
                  double* rms) {
  const double* s1 = views[0].source;
  const double* s2 = views[1].source;
  const double w[3] = {s1[0] - s2[0], s1[1] - s2[1], s1[2] - s2[2]};
  int m = 0;
  Eigen::Vector3d pc = Eigen::Vector3d::Zero(), xc = Eigen::Vector3d::Zero();
  for (int n = 0; n < n_landmarks; ++n) {
    const double* d1 = rays[0].data() + 3 * labels[0][n];
    const double* d2 = rays[1].data() + 3 * labels[1][n];
    double aa = 0, bb = 0, cc = 0, dd = 0, ee = 0;
    for (int i = 0; i < 3; ++i) {
      aa += d1[i] * d1[i];
      bb += d1[i] * d2[i];
      cc += d2[i] * d2[i];
      dd += d1[i] * w[i];
      ee += d2[i] * w[i];
    }
    const double den = aa * cc - bb * bb;
    // Seen in both views and not parallel (NaN compares false).
    (*seen)[n] = std::isfinite(den) && den > 1e-12 * aa * cc;
    if (!(*seen)[n]) continue;
    const double t1 = (bb * ee - cc * dd) / den, t2 = (aa * ee - bb * dd) / den;
    double* X = points->data() + 3 * n;
    for (int i = 0; i < 3; ++i) X[i] = 0.5 * (s1[i] + t1 * d1[i] + s2[i] + t2 * d2[i]);
    pc += Eigen::Map<const Eigen::Vector3d>(landmarks + 3 * n);
    xc += Eigen::Map<const Eigen::Vector3d>(X);
    ++m;
  }
  if (m < min_points || m == 0) return false;
  pc /= m;
  xc /= m;
  Eigen::Matrix3d H = Eigen::Matrix3d::Zero();  // sum (P - pc) (X - xc)^T
  for (int n = 0; n < n_landmarks; ++n) {
    if (!(*seen)[n]) continue;
    H += (Eigen::Map<const Eigen::Vector3d>(landmarks + 3 * n) - pc) *
         (Eigen::Map<const Eigen::Vector3d>(points->data() + 3 * n) - xc).transpose();
  }
  const Eigen::JacobiSVD<Eigen::Matrix3d> svd(H, Eigen::ComputeFullU | Eigen::ComputeFullV);
  const Eigen::Matrix3d& U = svd.matrixU();
  const Eigen::Matrix3d& V = svd.matrixV();
  const double det = (V * U.transpose()).determinant();
  Eigen::Vector3d D(1.0, 1.0, det > 0 ? 1.0 : (det < 0 ? -1.0 : 0.0));
  const Eigen::Matrix3d Rm = V * D.asDiagonal() * U.transpose();  // model -> world
  const Eigen::Vector3d tm = xc - Rm * pc;
  double sum = 0;
  for (int n = 0; n < n_landmarks; ++n) {
    if (!(*seen)[n]) continue;
    const Eigen::Vector3d r = Rm * Eigen::Map<const Eigen::Vector3d>(landmarks + 3 * n) + tm -
                              Eigen::Map<const Eigen::Vector3d>(points->data() + 3 * n);
    sum += r.squaredNorm();
  }
  *rms = std::sqrt(sum / m);
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) R[3 * i + j] = Rm(i, j);
    t[i] = tm(i);
  }
  return true;
}

}  // namespace

void TriangulatedPoses(const double* landmarks, int num_landmarks, const ConeView views[2],
                       const double* detections, int num_frames, const int32_t* mirror,
                       int min_points, int num_threads, double* poses) {
  const int N = num_landmarks;
  if (N < 0 || num_frames < 0)
    throw std::invalid_argument("TriangulatedPoses: got " + std::to_string(N) + " landmarks and " +
                                std::to_string(num_frames) + " frames: expected counts >= 0");
  if (min_points < 3)
    throw std::invalid_argument("min_points = " + std::to_string(min_points) +
                                ": expected at least 3 (a rigid fit needs three points)");
  std::vector<int> identity(N), perm(N);
  for (int n = 0; n < N; ++n) identity[n] = perm[n] = n;
  if (mirror != nullptr) {
    std::vector<char> taken(N, 0);
    for (int n = 0; n < N; ++n) {
      const int p = mirror[n];
      if (p < 0 || p >= N || taken[p])
        throw std::invalid_argument("mirror[" + std::to_string(n) + "] = " + std::to_string(p) +
                                    ": expected a permutation of the " + std::to_string(N) +
                                    " landmarks");
      taken[p] = 1;
      perm[n] = p;
    }
  }
  // The labellings (view 1, view 2) of Table 1's cases: none, view 2, view 1, both mirrored.
  const int n_cases = mirror != nullptr ? 4 : 1;
  const int* cases[4][2] = {{identity.data(), identity.data()},
                            {identity.data(), perm.data()},
                            {perm.data(), identity.data()},
                            {perm.data(), perm.data()}};
  const long long n_tasks = (num_frames + kFramesPerTask - 1) / kFramesPerTask;
  ParallelFor(n_tasks, num_threads, [&](long long task) {
    std::vector<double> rays[2] = {std::vector<double>(3 * N), std::vector<double>(3 * N)};
    std::vector<double> points(3 * N);
    std::vector<char> seen(N);
    const int f_end = static_cast<int>(std::min<long long>((task + 1) * kFramesPerTask, num_frames));
    for (int f = static_cast<int>(task * kFramesPerTask); f < f_end; ++f) {
      for (int k = 0; k < 2; ++k) {
        for (int n = 0; n < N; ++n) {
          const double* xy = detections + ((static_cast<long long>(f) * 2 + k) * N + n) * 2;
          double* d = rays[k].data() + 3 * n;
          PixelToWorld(views[k], xy[0], xy[1], d);  // NaN pixels give NaN rays
          for (int i = 0; i < 3; ++i) d[i] -= views[k].source[i];
        }
      }
      double best_rms = std::numeric_limits<double>::infinity(), best_R[9] = {}, best_t[3] = {};
      for (int c = 0; c < n_cases; ++c) {
        double R[9], t[3], rms;
        if (FitLabelling(landmarks, N, views, rays, cases[c], min_points, &points, &seen, R, t,
                         &rms) &&
            rms < best_rms) {
          best_rms = rms;
          std::copy(R, R + 9, best_R);
          std::copy(t, t + 3, best_t);
        }
      }
      double* out = poses + 6 * static_cast<long long>(f);
      if (!std::isfinite(best_rms)) {
        std::fill(out, out + 6, std::numeric_limits<double>::quiet_NaN());
        continue;
      }
      EulerFromRotation(best_R, out);
      for (int i = 0; i < 3; ++i) out[3 + i] = best_t[i];
    }
  });
}

}  // namespace fluororeg
