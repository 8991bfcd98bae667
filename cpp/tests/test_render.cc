// C++ tests of the renderers through the public C++ API (no Python).
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "fluororeg/render.h"

namespace fluororeg {
namespace {

// A sphere of radius r (mm) and attenuation mu, voxelised with 4^3 sub-samples per voxel in a
// cube of n^3 voxels of 1 mm centred on the model origin.
struct SpherePhantom {
  int n = 64;
  double r = 24.0, mu = 0.02;
  std::vector<float> data;
  VolumeGrid grid;
  SpherePhantom() {
    data.assign(static_cast<size_t>(n) * n * n, 0.f);
    const double c = 0.5 * (n - 1);
    for (int k = 0; k < n; ++k)
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < n; ++i) {
          int inside = 0;
          for (int s = 0; s < 64; ++s) {
            const double x = i - c + ((s & 3) + 0.5) / 4 - 0.5;
            const double y = j - c + (((s >> 2) & 3) + 0.5) / 4 - 0.5;
            const double z = k - c + ((s >> 4) + 0.5) / 4 - 0.5;
            inside += x * x + y * y + z * z <= r * r;
          }
          data[(static_cast<size_t>(k) * n + j) * n + i] = static_cast<float>(mu * inside / 64.0);
        }
    grid.data = data.data();
    grid.nx = grid.ny = grid.nz = n;
    grid.model_from_voxel = {{1, 0, 0, -c, 0, 1, 0, -c, 0, 0, 1, -c}};
  }
};

TEST(RenderParallel, CentreOfSphereMatchesChord) {
  SpherePhantom ph;
  const ParallelCamera camera{1.0, 61, 61};
  const double poses[12] = {0.3, -0.5, 0.9, 0, 0, 0, 1.2, 0.1, -0.4, 0, 0, 0};
  const double scales[2] = {1.0, 1.0};
  std::vector<float> out(2 * 61 * 61);
  RenderParallelDrr(ph.grid, camera, poses, scales, 2, out.data());
  for (int i = 0; i < 2; ++i) {
    const float centre = out[i * 61 * 61 + 30 * 61 + 30];
    EXPECT_NEAR(centre, 2 * ph.r * ph.mu, 0.005 * 2 * ph.r * ph.mu);
    const float corner = out[i * 61 * 61];  // 42 mm from the centre
    EXPECT_EQ(corner, 0.f);
  }
}

TEST(RenderCone, CentreRayMatchesChordAndLandmarkProjects) {
  SpherePhantom ph;
  ConeView view{};
  const double S[3] = {0, -600, 0}, D[3] = {0, 400, 0};
  for (int c = 0; c < 3; ++c) {
    view.source[c] = S[c];
    view.detector_centre[c] = D[c];
  }
  view.u[0] = 1;
  view.v[2] = -1;
  view.pitch_u = view.pitch_v = 1.0;
  view.width = view.height = 41;
  const double pose[6] = {0.2, 0.4, -0.3, 0, 0, 0};
  std::vector<float> out(41 * 41);
  RenderConeDrr(ph.grid, &view, pose, 1, out.data());
  EXPECT_NEAR(out[20 * 41 + 20], 2 * ph.r * ph.mu, 0.005 * 2 * ph.r * ph.mu);
  const double origin[3] = {0, 0, 0};
  double xy[2];
  uint8_t in_fov = 0;
  ProjectPointsCone(&view, pose, 1, origin, 1, xy, &in_fov);
  EXPECT_NEAR(xy[0], 20.0, 1e-9);
  EXPECT_NEAR(xy[1], 20.0, 1e-9);
  EXPECT_EQ(in_fov, 1);
}

TEST(Render, BadInputThrowsInvalidArgument) {
  SpherePhantom ph;
  const ParallelCamera camera{1.0, 8, 8};
  std::vector<float> out(64);
  const double nan_pose[6] = {0, NAN, 0, 0, 0, 0};
  const double scale = 1.0;
  EXPECT_THROW(RenderParallelDrr(ph.grid, camera, nan_pose, &scale, 1, out.data()),
               std::invalid_argument);
  const double pose[6] = {0, 0, 0, 0, 0, 0};
  const double bad_scale = 0.0;
  EXPECT_THROW(RenderParallelDrr(ph.grid, camera, pose, &bad_scale, 1, out.data()),
               std::invalid_argument);
  const ParallelCamera bad_camera{1.0, 0, 8};
  EXPECT_THROW(RenderParallelDrr(ph.grid, bad_camera, pose, &scale, 1, out.data()),
               std::invalid_argument);
  VolumeGrid flat = ph.grid;
  flat.nz = 1;
  EXPECT_THROW(RenderParallelDrr(flat, camera, pose, &scale, 1, out.data()), std::invalid_argument);
  ConeView degenerate{};
  degenerate.u[0] = 1;
  degenerate.v[1] = 1;
  degenerate.pitch_u = degenerate.pitch_v = 1;
  degenerate.width = degenerate.height = 8;  // source == detector centre: on the plane
  EXPECT_THROW(RenderConeDrr(ph.grid, &degenerate, pose, 1, out.data()), std::invalid_argument);
}

TEST(Render, CudaRequestWithoutDeviceIsAClearError) {
  if (CudaAvailable()) GTEST_SKIP() << "a CUDA device is present";
  SpherePhantom ph;
  const ParallelCamera camera{1.0, 8, 8};
  std::vector<float> out(64);
  const double pose[6] = {0, 0, 0, 0, 0, 0};
  const double scale = 1.0;
  RenderOptions options;
  options.device = Device::kCuda;
  EXPECT_THROW(RenderParallelDrr(ph.grid, camera, pose, &scale, 1, out.data(), options),
               std::runtime_error);
}

}  // namespace
}  // namespace fluororeg
