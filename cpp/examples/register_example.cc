// Registers one synthetic dual-fluoroscope frame with the fluororeg C++ API and prints the
// recovered pose. Build with -DFLUORO_BUILD_EXAMPLES=ON; run without arguments.
#include <cmath>
#include <cstdio>
#include <vector>

#include "fluororeg/geometry.h"
#include "fluororeg/metrics.h"
#include "fluororeg/registration.h"

using namespace fluororeg;

// A view looking along azimuth `az` (degrees) at the world origin: source 600 mm before it,
// detector 500 mm after it, 512 x 512 px of 0.6 mm.
static ConeView View(double az) {
  const double a = az * M_PI / 180.0, d[3] = {std::cos(a), std::sin(a), 0.0};
  ConeView v;
  for (int i = 0; i < 3; ++i) {
    v.source[i] = -600.0 * d[i];
    v.intensifier_centre[i] = 500.0 * d[i];
  }
  const double vv[3] = {0, 0, -1}, uu[3] = {d[1], -d[0], 0};
  for (int i = 0; i < 3; ++i) v.u[i] = uu[i], v.v[i] = vv[i];
  v.pitch_u = v.pitch_v = 0.6;
  v.width = v.height = 512;
  return v;
}

int main() {
  // Eight landmarks (mm, model frame): two symmetric pairs and four on the midline.
  const std::vector<double> landmarks = {40, 20,  10,  -40, 20,  10,  30, -50, -20, -30, -50, -20,
                                         0,  60,  30,  0,   -10, 50,  0,  -60, 0,   0,   10,  -45};
  const std::vector<int32_t> pairs = {0, 1, 2, 3};
  RegistrationSetup setup;
  setup.landmarks = landmarks.data();
  setup.num_landmarks = 8;
  setup.views[0] = View(-50.0);
  setup.views[1] = View(50.0);  // 100 degrees apart
  setup.pairs = pairs.data();
  setup.num_pairs = 2;

  // The "true" pose, and the landmarks it puts on both images (as a detector would).
  const double deg = M_PI / 180.0;
  const double truth[6] = {10 * deg, -15 * deg, 20 * deg, 5.0, -8.0, 12.0};
  std::vector<double> detections(2 * 8 * 2);
  const Affine3<double> T = AffineFromPose(truth);
  for (int k = 0; k < 2; ++k)
    for (int i = 0; i < 8; ++i) {
      const double* X = &landmarks[3 * i];
      ProjectCone(setup.views[k], T.Apply(Vec3<double>{X[0], X[1], X[2]}),
                  &detections[(k * 8 + i) * 2], &detections[(k * 8 + i) * 2 + 1]);
    }

  const RegistrationResult r = RegisterFrame(setup, detections.data(), nullptr, nullptr);
  std::printf("status %s, mirror case %d, n_vis %d, %d iterations, objective %.3g mm^2\n",
              RegistrationStatusName(r.status), r.mirror_case, r.n_vis, r.iterations,
              r.objective);
  std::printf("pose:  theta = (%.4f, %.4f, %.4f) deg, tau = (%.4f, %.4f, %.4f) mm\n",
              r.pose[0] / deg, r.pose[1] / deg, r.pose[2] / deg, r.pose[3], r.pose[4],
              r.pose[5]);
  double et, ep;
  PoseErrors(r.pose, truth, &et, &ep);
  std::printf("error: %.2g deg, %.2g mm\n", et / deg, ep);
  return (r.status == RegistrationStatus::kOk && et / deg < 1e-6 && ep < 1e-6) ? 0 : 1;
}
