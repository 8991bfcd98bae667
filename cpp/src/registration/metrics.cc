#include "fluororeg/metrics.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "fluororeg/geometry.h"

namespace fluororeg {

double WrapAngle(double a) {
  const double two_pi = 2.0 * M_PI;
  double w = std::fmod(a + M_PI, two_pi);
  if (w < 0) w += two_pi;
  w -= M_PI;
  return w >= M_PI ? w - two_pi : w;
}

void PoseErrors(const double* pose_a, const double* pose_b, double* eps_theta_rad,
                double* eps_tau_mm) {
  double et = 0, ep = 0;
  for (int i = 0; i < 3; ++i) {
    et = std::max(et, std::fabs(WrapAngle(pose_a[i] - pose_b[i])));
    ep = std::max(ep, std::fabs(pose_a[3 + i] - pose_b[3 + i]));
  }
  *eps_theta_rad = et;
  *eps_tau_mm = ep;
}

double MeanLandmarkDistance(const double* landmarks, int n, const double* pose_a,
                            const double* pose_b) {
  if (n < 1 || landmarks == nullptr) {
    throw std::invalid_argument("landmark count " + std::to_string(n) +
                                ": expected at least one landmark");
  }
  const Affine3<double> a = AffineFromPose(pose_a), b = AffineFromPose(pose_b);
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    const Vec3<double> X{landmarks[3 * i], landmarks[3 * i + 1], landmarks[3 * i + 2]};
    const Vec3<double> d = a.Apply(X) - b.Apply(X);
    sum += std::sqrt(Dot(d, d));
  }
  return sum / n;
}

}  // namespace fluororeg
