// Uses the installed fluororeg headers and library: Eq. 3 errors and one registration.
#include <cmath>
#include <cstdio>

#include <fluororeg/metrics.h>
#include <fluororeg/registration.h>

int main() {
  using namespace fluororeg;
  const double a[6] = {0.1, 0.2, 0.3, 1, 2, 3}, b[6] = {0.1, 0.25, 0.3, 1, 2, 4};
  double et, ep;
  PoseErrors(a, b, &et, &ep);
  // Four landmarks are too few to register when none is detected: status must say so.
  const double lm[12] = {0, 0, 0, 50, 0, 0, 0, 50, 0, 0, 0, 50};
  RegistrationSetup setup;
  setup.landmarks = lm;
  setup.num_landmarks = 4;
  for (int k = 0; k < 2; ++k) {
    const double az = (k == 0 ? -50.0 : 50.0) * M_PI / 180.0;
    const double d[3] = {std::cos(az), std::sin(az), 0};
    ConeView& v = setup.views[k];
    for (int i = 0; i < 3; ++i) v.source[i] = -600 * d[i], v.intensifier_centre[i] = 500 * d[i];
    v.u[0] = d[1], v.u[1] = -d[0], v.u[2] = 0;
    v.v[0] = 0, v.v[1] = 0, v.v[2] = -1;
    v.pitch_u = v.pitch_v = 0.6;
    v.width = v.height = 512;
  }
  double det[16];
  for (double& x : det) x = NAN;
  const RegistrationResult r = RegisterFrame(setup, det, nullptr, nullptr);
  std::printf("eps_theta %.3f rad, eps_tau %.1f mm, status %s\n", et, ep,
              RegistrationStatusName(r.status));
  return (std::fabs(et - 0.05) < 1e-12 && r.status == RegistrationStatus::kTooFewLandmarks) ? 0 : 1;
}
