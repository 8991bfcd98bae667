// Synthetic dual-fluoroscope geometry and skull-like landmarks for the C++ tests.
#pragma once

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "fluororeg/geometry.h"
#include "fluororeg/registration.h"

namespace fluororeg {
namespace testing {

// A view looking along `dir` (unit, horizontal) at the isocentre `iso`, source 600 mm before
// it, detector 500 mm after it (SDD 1100 mm), 512 x 512 px of 0.6 mm, rows pointing down (-z).
inline ConeView MakeView(const double iso[3], double azimuth_deg) {
  const double a = azimuth_deg * M_PI / 180.0;
  const double d[3] = {std::cos(a), std::sin(a), 0.0};
  ConeView v;
  for (int i = 0; i < 3; ++i) {
    v.source[i] = iso[i] - 600.0 * d[i];
    v.intensifier_centre[i] = iso[i] + 500.0 * d[i];
  }
  // v = -z (image rows down), u = v x n so that u x v = n = d.
  v.v[0] = 0, v.v[1] = 0, v.v[2] = -1;
  v.u[0] = v.v[1] * d[2] - v.v[2] * d[1];
  v.u[1] = v.v[2] * d[0] - v.v[0] * d[2];
  v.u[2] = v.v[0] * d[1] - v.v[1] * d[0];
  v.pitch_u = v.pitch_v = 0.6;
  v.width = v.height = 512;
  return v;
}

struct Scene {
  std::vector<double> landmarks;  // [33, 3]
  std::vector<int32_t> pairs;     // [13, 2]
  ConeView views[2];
  int n = 33;

  // World origin at the view 1 intensifier centre (as the paper's F1); views 100 degrees apart.
  explicit Scene(unsigned seed = 7) {
    const double iso0[3] = {0, 0, 0};
    const ConeView f1 = MakeView(iso0, -50.0);
    const double iso[3] = {-f1.intensifier_centre[0], -f1.intensifier_centre[1],
                           -f1.intensifier_centre[2]};
    views[0] = MakeView(iso, -50.0);
    views[1] = MakeView(iso, 50.0);
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> ux(15.0, 70.0), uyz(-70.0, 70.0);
    std::normal_distribution<double> jitter(0.0, 1.0);
    landmarks.assign(3 * n, 0.0);
    for (int i = 0; i < 13; ++i) {
      const double x = ux(rng), y = uyz(rng), z = uyz(rng);
      const double L[3] = {x, y, z}, Rm[3] = {-x + jitter(rng), y + jitter(rng), z + jitter(rng)};
      for (int c = 0; c < 3; ++c) {
        landmarks[3 * i + c] = L[c];
        landmarks[3 * (13 + i) + c] = Rm[c];
      }
      pairs.push_back(i);
      pairs.push_back(13 + i);
    }
    for (int i = 26; i < n; ++i) {
      landmarks[3 * i] = 2.0 * jitter(rng);
      landmarks[3 * i + 1] = uyz(rng);
      landmarks[3 * i + 2] = uyz(rng);
    }
  }

  RegistrationSetup Setup() const {
    RegistrationSetup s;
    s.landmarks = landmarks.data();
    s.num_landmarks = n;
    s.views[0] = views[0];
    s.views[1] = views[1];
    s.pairs = pairs.data();
    s.num_pairs = static_cast<int>(pairs.size() / 2);
    return s;
  }

  // detections [2, n, 2] px of the landmarks under `pose` (NaN outside the image), with
  // Gaussian noise of sigma_px.
  std::vector<double> Detect(const double* pose, double sigma_px = 0.0,
                             std::mt19937* rng = nullptr) const {
    std::vector<double> det(4 * n, std::numeric_limits<double>::quiet_NaN());
    const Affine3<double> T = AffineFromPose(pose);
    std::normal_distribution<double> noise(0.0, 1.0);
    for (int k = 0; k < 2; ++k) {
      for (int i = 0; i < n; ++i) {
        const Vec3<double> Xw =
            T.Apply(Vec3<double>{landmarks[3 * i], landmarks[3 * i + 1], landmarks[3 * i + 2]});
        double px, py;
        if (!ProjectCone(views[k], Xw, &px, &py)) continue;
        if (sigma_px > 0 && rng != nullptr) {
          px += sigma_px * noise(*rng);
          py += sigma_px * noise(*rng);
        }
        if (!InImage(px, py, views[k].width, views[k].height)) continue;
        det[(k * n + i) * 2] = px;
        det[(k * n + i) * 2 + 1] = py;
      }
    }
    return det;
  }

  // Swap the detections of every pair in view k.
  void Mirror(std::vector<double>* det, int k) const {
    for (size_t p = 0; p < pairs.size(); p += 2) {
      const int a = pairs[p], b = pairs[p + 1];
      for (int c = 0; c < 2; ++c)
        std::swap((*det)[(k * n + a) * 2 + c], (*det)[(k * n + b) * 2 + c]);
    }
  }

  // A random pose within +-30 deg, +-30 mm of (0, system centre).
  void RandomPose(std::mt19937& rng, double* pose) const {
    std::uniform_real_distribution<double> u(-30.0, 30.0);
    double c[3];
    SystemCentre(views, c);
    for (int i = 0; i < 3; ++i) pose[i] = u(rng) * M_PI / 180.0;
    for (int i = 0; i < 3; ++i) pose[3 + i] = c[i] + u(rng);
  }
};

}  // namespace testing
}  // namespace fluororeg
