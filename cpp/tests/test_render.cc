// C++ tests of the renderers through the public C++ API (no Python).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <vector>

#include "fluororeg/render.h"
#include "render/render_internal.h"

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
    view.intensifier_centre[c] = D[c];
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
  degenerate.width = degenerate.height = 8;  // source == intensifier centre: on the plane
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

ConeView SideView(int width, int height, double pitch) {
  ConeView view{};
  const double S[3] = {-500, -300, 40}, D[3] = {400, 240, -32};
  const double len = std::sqrt(900.0 * 900 + 540.0 * 540 + 72.0 * 72);
  const double dir[3] = {900 / len, 540 / len, -72 / len};
  // u orthogonal to dir in the x-y plane, v = dir x u.
  const double ul = std::sqrt(dir[0] * dir[0] + dir[1] * dir[1]);
  const double u[3] = {-dir[1] / ul, dir[0] / ul, 0};
  const double v[3] = {dir[1] * u[2] - dir[2] * u[1], dir[2] * u[0] - dir[0] * u[2],
                       dir[0] * u[1] - dir[1] * u[0]};
  for (int c = 0; c < 3; ++c) {
    view.source[c] = S[c];
    view.intensifier_centre[c] = D[c];
    view.u[c] = u[c];
    view.v[c] = v[c];
  }
  view.pitch_u = view.pitch_v = pitch;
  view.width = width;
  view.height = height;
  return view;
}

TEST(RenderVolume, PreparedEqualsVolumeGridCalls) {
  SpherePhantom ph;
  const RenderVolume prepared(ph.grid);
  EXPECT_EQ(prepared.grid().nx, ph.n);
  EXPECT_NE(prepared.grid().data, ph.grid.data);  // a copy
  const ParallelCamera camera{1.5, 40, 36};
  const double poses[18] = {0.3, -0.5, 0.9, 1, -2, 0, 1.2, 0.1, -2.4, 0, 3, 0,
                            -1.4, 1.5, 0.2, 2, 0, 1};
  const double scales[3] = {1.0, 1.3, 0.8};
  std::vector<float> a(3 * 40 * 36), b(3 * 40 * 36);
  RenderParallelDrr(ph.grid, camera, poses, scales, 3, a.data());
  for (int repeat = 0; repeat < 2; ++repeat) {
    RenderParallelDrr(prepared, camera, poses, scales, 3, b.data());
    EXPECT_EQ(a, b);
  }
  const ConeView views[3] = {SideView(40, 36, 2.0), SideView(40, 36, 2.0), SideView(40, 36, 2.0)};
  RenderConeDrr(ph.grid, views, poses, 3, a.data());
  RenderConeDrr(prepared, views, poses, 3, b.data());
  EXPECT_EQ(a, b);
  EXPECT_GT(*std::max_element(a.begin(), a.end()), 0.5f);
  std::shared_ptr<float> host = AllocateHostImages(Device::kCpu, a.size());  // ordinary memory
  RenderConeDrr(prepared, views, poses, 3, host.get());
  EXPECT_TRUE(std::equal(a.begin(), a.end(), host.get()));
  RenderOptions device_out;
  device_out.output_on_device = true;
  EXPECT_THROW(RenderConeDrr(prepared, views, poses, 3, b.data(), device_out),
               std::invalid_argument);
}

TEST(RenderVolume, CudaMatchesCpu) {
  if (!CudaAvailable()) GTEST_SKIP() << "no CUDA device";
  SpherePhantom ph;
  const RenderVolume prepared(ph.grid, Device::kCuda);
  const ParallelCamera camera{1.5, 40, 36};
  const double poses[18] = {0.3, -0.5, 0.9, 1, -2, 0, 1.2, 0.1, -2.4, 0, 3, 0,
                            -1.4, 1.5, 0.2, 2, 0, 1};
  const double scales[3] = {1.0, 1.3, 0.8};
  std::vector<float> cpu(3 * 40 * 36), gpu(3 * 40 * 36);
  RenderOptions cuda;
  cuda.device = Device::kCuda;
  RenderParallelDrr(prepared, camera, poses, scales, 3, cpu.data());
  RenderParallelDrr(prepared, camera, poses, scales, 3, gpu.data(), cuda);
  for (size_t i = 0; i < cpu.size(); ++i) ASSERT_NEAR(gpu[i], cpu[i], 1e-4 * 2 * ph.r * ph.mu);
  EXPECT_GT(prepared.LastCudaKernelMs(), 0.0);
  const ConeView views[3] = {SideView(40, 36, 2.0), SideView(40, 36, 2.0), SideView(40, 36, 2.0)};
  RenderConeDrr(prepared, views, poses, 3, cpu.data());
  cuda.cuda_texture = false;
  RenderConeDrr(prepared, views, poses, 3, gpu.data(), cuda);
  for (size_t i = 0; i < cpu.size(); ++i) ASSERT_NEAR(gpu[i], cpu[i], 1e-4 * 2 * ph.r * ph.mu);
  cuda.cuda_texture = true;
  RenderConeDrr(prepared, views, poses, 3, gpu.data(), cuda);
  for (size_t i = 0; i < cpu.size(); ++i) ASSERT_NEAR(gpu[i], cpu[i], 5e-3 * 2 * ph.r * ph.mu);
  // Perspective shear-warp.
  RenderOptions shear_warp;
  shear_warp.cone_method = ConeMethod::kShearWarp;
  RenderConeDrr(prepared, views, poses, 3, cpu.data(), shear_warp);
  cuda.cone_method = ConeMethod::kShearWarp;
  RenderConeDrr(prepared, views, poses, 3, gpu.data(), cuda);
  for (size_t i = 0; i < cpu.size(); ++i) ASSERT_NEAR(gpu[i], cpu[i], 1e-4 * 2 * ph.r * ph.mu);
  cuda.cone_method = ConeMethod::kRayMarch;
  // Images copied straight into page-locked host memory equal those staged into ordinary memory,
  // and its blocks are reused for the next calls.
  RenderConeDrr(prepared, views, poses, 3, gpu.data(), cuda);
  const float* first_block = nullptr;
  for (int repeat = 0; repeat < 2; ++repeat) {
    std::shared_ptr<float> locked = AllocateHostImages(Device::kCuda, gpu.size());
    if (repeat == 0) first_block = locked.get();
    EXPECT_EQ(locked.get(), first_block);
    RenderConeDrr(prepared, views, poses, 3, locked.get(), cuda);
    for (size_t i = 0; i < gpu.size(); ++i) ASSERT_EQ(locked.get()[i], gpu[i]);
  }
  // Images kept on the device.
  std::shared_ptr<float> device_images = CudaAllocateFloats(cpu.size());
  cuda.output_on_device = true;
  RenderConeDrr(prepared, views, poses, 3, device_images.get(), cuda);
  EXPECT_GT(prepared.DeviceBytes(), sizeof(float) * ph.data.size());
}

TEST(RenderConePixels, EqualsTheFullImageAtTheListedPixels) {
  SpherePhantom ph;
  const RenderVolume prepared(ph.grid);
  const ConeView view = SideView(40, 36, 2.0);
  const double poses[12] = {0.3, -0.5, 0.9, 1, -2, 0, 1.2, 0.1, -2.4, 0, 3, 0};
  std::vector<float> full(2 * 40 * 36);
  const ConeView views[2] = {view, view};
  RenderConeDrr(prepared, views, poses, 2, full.data());
  const std::vector<int32_t> pixels = {0, 41, 17 * 40 + 20, 18 * 40 + 19, 35 * 40 + 39, 700};
  const int m = static_cast<int>(pixels.size());
  std::vector<float> values(2 * m);
  RenderConePixels(prepared, view, pixels.data(), m, poses, 2, values.data());
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < m; ++j) EXPECT_EQ(values[i * m + j], full[i * 40 * 36 + pixels[j]]);
  EXPECT_GT(values[2], 0.f);  // the centre ray crosses the sphere
  const int32_t outside[1] = {40 * 36};
  EXPECT_THROW(RenderConePixels(prepared, view, outside, 1, poses, 1, values.data()),
               std::invalid_argument);
}

// Requests of RenderConePixelsBatch (other views, pixel lists and pose counts, one empty), and
// what each request's own RenderConePixels call gives, on `device`.
struct PixelBatch {
  std::vector<ConeView> views;
  std::vector<std::vector<int32_t>> pixels;
  std::vector<std::vector<double>> poses;
  std::vector<std::vector<float>> batched, alone;
  PixelBatch(const RenderVolume& volume, const RenderOptions& options) {
    views = {SideView(40, 36, 2.0), SideView(40, 36, 2.3), SideView(40, 36, 1.7),
             SideView(40, 36, 2.0)};
    const double p[18] = {0.3, -0.5, 0.9, 1,   -2,  0, 1.2, 0.1, -2.4,
                          0,   3,    0,   -0.4, 0.2, 0.1, 2, 1,   -1};
    const int n_poses[4] = {2, 3, 1, 2};
    for (int r = 0; r < 4; ++r) {
      pixels.emplace_back();
      for (int i = r; r != 3 && i < 40 * 36; i += 5 + 2 * r) {
        pixels[r].push_back(i);  // request 3: none
      }
      poses.emplace_back(p + 6 * (r % 2), p + 6 * (r % 2) + 6 * n_poses[r]);
    }
    std::vector<ConePixelRequest> requests(4);
    for (int r = 0; r < 4; ++r) {
      const int m = static_cast<int>(pixels[r].size()), n = n_poses[r];
      batched.emplace_back(static_cast<size_t>(n) * m, -1.f);
      alone.emplace_back(static_cast<size_t>(n) * m, -2.f);
      requests[r] = {views[r], pixels[r].data(), m, poses[r].data(), n, batched[r].data()};
      RenderConePixels(volume, views[r], pixels[r].data(), m, poses[r].data(), n, alone[r].data(),
                       options);
    }
    RenderConePixelsBatch(volume, requests.data(), 4, options);
  }
};

TEST(RenderConePixels, BatchGivesEachRequestItsOwnCall) {
  SpherePhantom ph;
  const RenderVolume prepared(ph.grid);
  const PixelBatch b(prepared, RenderOptions{});
  for (int r = 0; r < 4; ++r) EXPECT_EQ(b.batched[r], b.alone[r]) << "request " << r;
  EXPECT_TRUE(b.batched[3].empty());
  ConePixelRequest bad{b.views[0], b.pixels[0].data(), 1, b.poses[0].data(), 1, nullptr};
  const int32_t outside[1] = {40 * 36};
  bad.pixels = outside;
  EXPECT_THROW(RenderConePixelsBatch(prepared, &bad, 1), std::invalid_argument);
}

// Smooth blobs in a volume with anisotropic voxels and rotated axes (model_from_voxel a rotation
// times diag(spacing) plus a shift), for derivatives: at least 4.5 sigma from every face, so that
// the volume's box cuts off nothing (moving a cut-off would add to the finite differences what
// the interpolant's gradient does not see).
struct BlobPhantom {
  int nx = 48, ny = 40, nz = 36;
  std::vector<float> data;
  VolumeGrid grid;
  BlobPhantom() {
    data.assign(static_cast<size_t>(nx) * ny * nz, 0.f);
    const double blobs[3][5] = {{24, 20, 18, 4.0, 0.03}, {30, 22, 20, 3.0, 0.05},
                                {17, 16, 15, 2.5, 0.04}};  // centre (voxels), sigma, peak
    for (int k = 0; k < nz; ++k)
      for (int j = 0; j < ny; ++j)
        for (int i = 0; i < nx; ++i) {
          double v = 0;
          for (const auto& b : blobs) {
            const double r2 = (i - b[0]) * (i - b[0]) + (j - b[1]) * (j - b[1]) +
                              (k - b[2]) * (k - b[2]);
            v += b[4] * std::exp(-0.5 * r2 / (b[3] * b[3]));
          }
          data[(static_cast<size_t>(k) * ny + j) * nx + i] = static_cast<float>(v);
        }
    grid.data = data.data();
    grid.nx = nx, grid.ny = ny, grid.nz = nz;
    const double a = 0.4, c = std::cos(a), s = std::sin(a);  // about z, then diag(1.1, 0.9, 1.3)
    grid.model_from_voxel = {{c * 1.1, -s * 0.9, 0, -20, s * 1.1, c * 0.9, 0, -18, 0, 0, 1.3, -25}};
  }
};

// The pose moved along the tangent of ConePixelRequest::pose_gradient: (exp(w) R, tau + dt).
std::vector<double> MovedPose(const double* pose, const double* w, const double* dt) {
  double R[9], E[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1}, Rn[9];
  RotationFromEulerZYX(pose, R);
  const double a = std::sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2]);
  if (a > 0) {  // Rodrigues
    const double k[3] = {w[0] / a, w[1] / a, w[2] / a}, c = std::cos(a), s = std::sin(a);
    const double K[9] = {0, -k[2], k[1], k[2], 0, -k[0], -k[1], k[0], 0};
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        double kk = 0;
        for (int l = 0; l < 3; ++l) kk += K[3 * i + l] * K[3 * l + j];
        E[3 * i + j] += s * K[3 * i + j] + (1 - c) * kk;
      }
  }
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      Rn[3 * i + j] = 0;
      for (int l = 0; l < 3; ++l) Rn[3 * i + j] += E[3 * i + l] * R[3 * l + j];
    }
  std::vector<double> out(6);
  EulerFromRotation(Rn, out.data());
  for (int c = 0; c < 3; ++c) out[3 + c] = pose[3 + c] + dt[c];
  return out;
}

TEST(RenderConePixels, PoseGradientsMatchCentralDifferences) {
  BlobPhantom ph;
  const RenderVolume prepared(ph.grid);
  const ConeView view = SideView(48, 40, 1.6);
  const double poses[12] = {0.2, -0.3, 0.5, 2, -3, 1, -0.6, 0.4, 2.1, -1, 2, -2};
  std::vector<int32_t> pixels;
  for (int i = 0; i < 48 * 40; i += 3) pixels.push_back(i);
  const int m = static_cast<int>(pixels.size());
  RenderOptions fine;
  fine.step_voxels = 0.05;  // the samples' positions along the ray barely matter
  std::vector<float> values(2 * m), grad(2 * 6 * m), plain(2 * m);
  ConePixelRequest q{view, pixels.data(), m, poses, 2, values.data()};
  q.pose_gradient = grad.data();
  RenderConePixelsBatch(prepared, &q, 1, fine);
  RenderConePixels(prepared, view, pixels.data(), m, poses, 2, plain.data(), fine);
  float peak = 0;
  for (int i = 0; i < 2 * m; ++i) {
    EXPECT_NEAR(values[i], plain[i], 1e-5f * std::max(1.f, plain[i])) << "value " << i;
    peak = std::max(peak, plain[i]);
  }
  ASSERT_GT(peak, 0.1f);
  // Steps large enough that the float rounding of the rays' voxel coordinates does not show in
  // the differences (at 1e-3 rad they scatter by several percent), small enough for their
  // second-order error.
  const double h[6] = {0.02, 0.02, 0.02, 0.1, 0.1, 0.1};  // rad, mm
  for (int k = 0; k < 2; ++k) {
    for (int j = 0; j < 6; ++j) {
      double w[3] = {0, 0, 0}, dt[3] = {0, 0, 0};
      double* e = j < 3 ? w + j : dt + j - 3;
      *e = h[j];
      const std::vector<double> plus = MovedPose(poses + 6 * k, w, dt);
      *e = -h[j];
      const std::vector<double> minus = MovedPose(poses + 6 * k, w, dt);
      std::vector<float> vp(m), vm(m);
      RenderConePixels(prepared, view, pixels.data(), m, plus.data(), 1, vp.data(), fine);
      RenderConePixels(prepared, view, pixels.data(), m, minus.data(), 1, vm.data(), fine);
      double scale = 0;
      std::vector<double> fd(m);
      for (int i = 0; i < m; ++i) {
        fd[i] = (static_cast<double>(vp[i]) - vm[i]) / (2 * h[j]);
        scale = std::max(scale, std::abs(fd[i]));
      }
      ASSERT_GT(scale, 0) << "pose " << k << " parameter " << j;
      for (int i = 0; i < m; ++i) {
        EXPECT_NEAR(grad[(6 * k + j) * m + i], fd[i], 0.01 * scale)
            << "pose " << k << " parameter " << j << " pixel " << pixels[i];
      }
    }
  }
  // Not with an early stop (the integral would be partial).
  RenderOptions stopping = fine;
  stopping.stop_above = 1.0;
  EXPECT_THROW(RenderConePixelsBatch(prepared, &q, 1, stopping), std::invalid_argument);
}

// A request's own stop_above: its rays stop once above it (the silhouette stays), the other
// requests of the batch march whole rays.
TEST(RenderConePixels, RequestStopAboveKeepsTheSilhouette) {
  SpherePhantom ph;
  const RenderVolume prepared(ph.grid);
  const ConeView view = SideView(40, 36, 2.0);
  const double poses[6] = {0.3, -0.5, 0.9, 1, -2, 0};
  std::vector<int32_t> pixels(40 * 36);
  for (int i = 0; i < 40 * 36; ++i) pixels[i] = i;
  const int m = static_cast<int>(pixels.size());
  std::vector<float> whole(m), stopped(m), beside(m);
  ConePixelRequest q[2] = {{view, pixels.data(), m, poses, 1, stopped.data()},
                           {view, pixels.data(), m, poses, 1, beside.data()}};
  q[0].stop_above = 1e-3;
  RenderConePixelsBatch(prepared, q, 2);
  RenderConePixels(prepared, view, pixels.data(), m, poses, 1, whole.data());
  int inside = 0, cut = 0;
  for (int i = 0; i < m; ++i) {
    EXPECT_EQ(stopped[i] > 1e-3f, whole[i] > 1e-3f) << "pixel " << i;
    EXPECT_LE(stopped[i], whole[i]) << "pixel " << i;
    EXPECT_EQ(beside[i], whole[i]) << "pixel " << i;
    inside += whole[i] > 1e-3f;
    cut += stopped[i] < whole[i];
  }
  EXPECT_GT(inside, 100);
  EXPECT_GT(cut, inside / 2);  // most rays through the sphere stopped early
  q[0].stop_above = -1;
  EXPECT_THROW(RenderConePixelsBatch(prepared, q, 2), std::invalid_argument);
  std::vector<float> grad(6 * m);
  q[0].stop_above = 1e-3;
  q[0].pose_gradient = grad.data();  // gradients need whole rays
  EXPECT_THROW(RenderConePixelsBatch(prepared, q, 2), std::invalid_argument);
}

TEST(RenderConePixels, CudaMatchesCpu) {
  if (!CudaAvailable()) GTEST_SKIP() << "no CUDA device";
  SpherePhantom ph;
  const RenderVolume prepared(ph.grid, Device::kCuda);
  const ConeView view = SideView(40, 36, 2.0);
  const double poses[12] = {0.3, -0.5, 0.9, 1, -2, 0, 1.2, 0.1, -2.4, 0, 3, 0};
  std::vector<int32_t> pixels;
  for (int i = 0; i < 40 * 36; i += 7) pixels.push_back(i);
  const int m = static_cast<int>(pixels.size());
  std::vector<float> values(2 * m);
  RenderConePixels(prepared, view, pixels.data(), m, poses, 2, values.data());
  RenderOptions cuda;
  cuda.device = Device::kCuda;
  cuda.cuda_texture = false;
  std::vector<float> gpu(2 * m);
  RenderConePixels(prepared, view, pixels.data(), m, poses, 2, gpu.data(), cuda);
  for (int i = 0; i < 2 * m; ++i) EXPECT_NEAR(gpu[i], values[i], 1e-4 * 2 * ph.r * ph.mu);
  // A batch of requests in one launch: each as its own CPU call.
  const PixelBatch cpu(prepared, RenderOptions{}), on_gpu(prepared, cuda);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(on_gpu.batched[r], on_gpu.alone[r]) << "request " << r;
    ASSERT_EQ(on_gpu.batched[r].size(), cpu.alone[r].size());
    for (size_t i = 0; i < cpu.alone[r].size(); ++i)
      EXPECT_NEAR(on_gpu.batched[r][i], cpu.alone[r][i], 1e-4 * 2 * ph.r * ph.mu);
  }
  // Pose gradients (their own launch) beside a plain request in one batch: the CPU's values.
  BlobPhantom blob;
  const RenderVolume blob_volume(blob.grid, Device::kCuda);
  std::vector<float> plain_cpu(2 * m), plain_gpu(2 * m), v_cpu(2 * m), v_gpu(2 * m),
      g_cpu(12 * m), g_gpu(12 * m);
  for (int d = 0; d < 2; ++d) {
    ConePixelRequest q[2] = {{view, pixels.data(), m, poses, 2, (d ? plain_gpu : plain_cpu).data()},
                             {view, pixels.data(), m, poses, 2, (d ? v_gpu : v_cpu).data()}};
    q[1].pose_gradient = (d ? g_gpu : g_cpu).data();
    RenderConePixelsBatch(blob_volume, q, 2, d ? cuda : RenderOptions{});
  }
  float g_scale = 0;
  for (float g : g_cpu) g_scale = std::max(g_scale, std::abs(g));
  for (int i = 0; i < 2 * m; ++i) {
    EXPECT_NEAR(plain_gpu[i], plain_cpu[i], 1e-4f) << i;
    EXPECT_NEAR(v_gpu[i], v_cpu[i], 1e-4f) << i;
  }
  for (int i = 0; i < 12 * m; ++i) EXPECT_NEAR(g_gpu[i], g_cpu[i], 1e-4f * g_scale) << i;
}

// The CUDA launchers' per-element bodies, run here on the host: the DRRs warped from
// intermediate pixels computed by ShearColumns (kWidth columns per call, as the CUDA threads)
// equal the CPU renderer's (slice by slice over bands of rows) bit for bit, and the rays split
// into parts (as small CUDA batches) sum to the whole rays.
// The intermediate image [inter_h, inter_w] of one shear-warp setup by the CUDA launcher's
// per-element body run on the host, one column and four columns per call (which must agree).
template <typename Setup>
std::vector<float> IntermediateOfCudaBodies(const Setup& s, const internal::PaddedSlices& slices) {
  const size_t inter_size = static_cast<size_t>(s.inter_w) * s.inter_h;
  std::vector<float> cols1(inter_size, -1.f), cols4(inter_size, -1.f);
  for (int q = 0; q < s.inter_h; ++q) {
    float* row1 = cols1.data() + static_cast<size_t>(q) * s.inter_w;
    float* row4 = cols4.data() + static_cast<size_t>(q) * s.inter_w;
    for (int p = 0; p < s.inter_w; ++p) kernels::ShearColumns<1>(s, slices.Stack(), p, q, row1 + p);
    for (int p = 0; p < s.inter_w; p += 4) {
      float out[4] = {-1, -1, -1, -1};
      kernels::ShearColumns<4>(s, slices.Stack(), p, q, out);
      for (int t = 0; t < 4 && p + t < s.inter_w; ++t) row4[p + t] = out[t];
    }
  }
  EXPECT_EQ(cols1, cols4);
  return cols4;
}

TEST(RenderKernels, CudaBodiesEqualCpuLoops) {
  SpherePhantom ph;
  RenderVolume prepared(ph.grid);
  RenderVolume::State& state = prepared.state();
  const ParallelCamera camera{1.5, 40, 36};
  const double poses[18] = {0.3, -0.5, 0.9, 1, -2, 0, 1.2, 0.1, -2.4, 0, 3, 0,
                            -1.4, 1.5, 0.2, 2, 0, 1};
  const double scales[3] = {1.1, 1.1, 1.1};
  std::vector<float> cpu(3 * camera.width * camera.height);
  RenderParallelDrr(prepared, camera, poses, scales, 3, cpu.data());
  int axes_seen = 0, max_inter_h = 0;
  for (int i = 0; i < 3; ++i) {
    const kernels::ShearWarpSetup s =
        internal::MakeShearWarpSetup(state.grid, camera, poses + 6 * i, scales[i]);
    ASSERT_GT(s.inter_w * s.inter_h, 0);
    axes_seen |= 1 << s.axis;
    max_inter_h = std::max(max_inter_h, s.inter_h);
    const internal::PaddedSlices& slices = state.Slices(s.axis);
    const std::vector<float> cols4 = IntermediateOfCudaBodies(s, slices);
    const float* image = cpu.data() + static_cast<size_t>(i) * camera.width * camera.height;
    float max_value = 0;
    for (int y = 0; y < camera.height; ++y) {
      for (int x = 0; x < camera.width; ++x) {
        const float v = image[y * camera.width + x];
        EXPECT_EQ(v, kernels::WarpPixel(s, cols4.data(), x, y)) << "pose " << i << " pixel " << x << ", " << y;
        max_value = std::max(max_value, v);
      }
    }
    EXPECT_GT(max_value, 0.5f);
  }
  EXPECT_GT(axes_seen, 1);  // more than one principal axis
  EXPECT_GT(max_inter_h, 64);  // more than one band of rows of the CPU loop (kShearBand)

  state.PrepareCone();
  const ConeView view = SideView(24, 20, 3.0);
  const kernels::ConeRaySetup s = internal::MakeConeRaySetup(state, view, poses, 1.0);
  const kernels::ArraySampler sampler{state.grid.data, state.grid.nx, state.grid.ny, state.grid.nz};
  double max_value = 0;
  for (int y = 0; y < view.height; ++y) {
    for (int x = 0; x < view.width; ++x) {
      const float whole = kernels::ConeRayIntegral(s, sampler, state.occupancy.data(), x, y);
      max_value = std::max<double>(max_value, whole);
      for (int parts : {2, 4, 8}) {
        double sum = 0;
        for (int part = 0; part < parts; ++part) {
          sum += kernels::ConeRayIntegral(s, sampler, state.occupancy.data(), x, y, part, parts);
        }
        ASSERT_NEAR(sum, whole, 1e-5 * (1 + std::fabs(whole))) << x << ", " << y << ", " << parts;
      }
    }
  }
  EXPECT_GT(max_value, 0.5);
}

// The perspective shear-warp: the CPU renderer's images equal the CUDA launcher's bodies run
// on the host (ShearColumns, any width, then WarpPixel), bit for bit, over more than one
// principal axis; they stay close to the ray marcher's; images the factorisation cannot take
// (a source inside the volume) are ray-marched; RenderConePixels refuses the method.
// A sphere, or a spherical shell (hollow: rows of two runs of non-zero voxels, the hollow up to
// 40 columns wide, so that rows through its middle have two stretches).
void ConeShearWarpMatchesBodies(bool hollow) {
  SpherePhantom ph;
  if (hollow) {
    const double c = 0.5 * (ph.n - 1);
    for (int k = 0; k < ph.n; ++k)
      for (int j = 0; j < ph.n; ++j)
        for (int i = 0; i < ph.n; ++i) {
          const double r2 = (i - c) * (i - c) + (j - c) * (j - c) + (k - c) * (k - c);
          if (r2 < 20.0 * 20.0) ph.data[(static_cast<size_t>(k) * ph.n + j) * ph.n + i] = 0.f;
        }
  }
  RenderVolume prepared(ph.grid);
  RenderVolume::State& state = prepared.state();
  const double poses[18] = {0.3, -0.5, 0.9, 1, -2, 0, 1.2, 0.1, -2.4, 0, 3, 0,
                            -1.4, 1.5, 0.2, 2, 0, 1};
  const ConeView view = SideView(40, 36, 2.0);
  const ConeView views[3] = {view, view, view};
  const int W = view.width, H = view.height;
  std::vector<float> sheared(3 * W * H), marched(3 * W * H);
  RenderOptions shear_warp;
  shear_warp.cone_method = ConeMethod::kShearWarp;
  RenderConeDrr(prepared, views, poses, 3, sheared.data(), shear_warp);
  RenderConeDrr(prepared, views, poses, 3, marched.data());
  int axes_seen = 0;
  for (int i = 0; i < 3; ++i) {
    const kernels::ConeShearSetup s = internal::MakeConeShearSetup(state.grid, view, poses + 6 * i);
    ASSERT_EQ(s.valid, 1);
    ASSERT_GT(s.inter_w * s.inter_h, 0);
    axes_seen |= 1 << s.axis;
    const internal::PaddedSlices& slices = state.Slices(s.axis);
    const std::vector<float> cols4 = IntermediateOfCudaBodies(s, slices);
    double diff = 0, sum = 0;
    for (int y = 0; y < H; ++y) {
      for (int x = 0; x < W; ++x) {
        const size_t o = (static_cast<size_t>(i) * H + y) * W + x;
        EXPECT_EQ(sheared[o], kernels::WarpPixel(s, cols4.data(), x, y))
            << "pose " << i << " pixel " << x << ", " << y;
        diff += std::fabs(sheared[o] - marched[o]);
        sum += marched[o];
      }
    }
    EXPECT_GT(sum, 100 * 0.5);
    EXPECT_LT(diff, 0.02 * sum) << "pose " << i;
  }
  EXPECT_GT(axes_seen & (axes_seen - 1), 0);  // more than one principal axis
  if (hollow) {
    const internal::PaddedSlices& slices = state.Slices(2);
    int two_stretches = 0;
    for (size_t r = 0; r + 1 < slices.stretch_offset.size(); ++r) {
      two_stretches += slices.stretch_offset[r + 1] - slices.stretch_offset[r] == 2;
    }
    EXPECT_GT(two_stretches, 100);  // the shell's row pairs through the wide part of the hollow
    return;
  }

  ConeView inside = view;  // the source at the sphere's centre: no factorisation
  for (int c = 0; c < 3; ++c) inside.source[c] = 0.0;
  const ConeView mixed[2] = {inside, view};
  EXPECT_EQ(internal::MakeConeShearSetup(state.grid, inside, poses).valid, 0);
  std::vector<float> a(2 * W * H), b(2 * W * H);
  RenderConeDrr(prepared, mixed, poses, 2, a.data(), shear_warp);
  RenderConeDrr(prepared, mixed, poses, 2, b.data());
  EXPECT_TRUE(std::equal(a.begin(), a.begin() + W * H, b.begin()));  // ray-marched
  EXPECT_TRUE(std::equal(a.begin() + W * H, a.end(), sheared.begin() + W * H));  // as before
  EXPECT_GT(*std::max_element(a.begin(), a.begin() + W * H), 0.2f);

  const int32_t pixels[2] = {0, 5};
  float out[2];
  EXPECT_THROW(RenderConePixels(prepared, view, pixels, 2, poses, 1, out, shear_warp),
               std::invalid_argument);
}

// Stretches of two padded rows' runs: widened by a column on each side, merged in column
// order, joined across gaps narrower than kMinSkippedGap, kept apart across wider ones.
TEST(RenderKernels, RowPairStretchesMergeAndJoinRuns) {
  const int g = kernels::kMinSkippedGap;
  const std::vector<int32_t> a = {5, 9, 60 + g, 70 + g};  // row: two runs far apart
  const std::vector<int32_t> b = {12, 20, 40 + g, 41 + g};  // next row: one close, one between
  std::vector<int32_t> out;
  internal::RowPairStretches(a.data(), a.data() + a.size(), b.data(), b.data() + b.size(), &out);
  // [4, 10) and [11, 21) join (gap 1); [39 + g, 42 + g) lies 18 + g columns on: apart; it and
  // [59 + g, 71 + g) are 17 columns apart: joined.
  EXPECT_EQ(out, (std::vector<int32_t>{4, 21, 39 + g, 71 + g}));
  out.clear();
  internal::RowPairStretches(a.data(), a.data() + a.size(), b.data(), b.data(), &out);
  EXPECT_EQ(out, (std::vector<int32_t>{4, 10, 59 + g, 71 + g}));  // one row: its runs widened
  out.clear();
  internal::RowPairStretches(a.data(), a.data(), b.data(), b.data(), &out);
  EXPECT_TRUE(out.empty());  // two empty rows: nothing to sample
}

// The warp's bilinear sample has no branches (so that the CPU's loops vectorise): a tap outside
// the intermediate image weighs zero. It equals, bit for bit (the sign of a zero included: the
// image's first pixels are negative), the sum over the taps inside, in the same order, at and
// past every edge.
TEST(RenderKernels, SampleIntermediateSumsTheTapsInsideTheImage) {
  const int w = 5, h = 4;
  std::vector<float> inter(w * h);
  for (int i = 0; i < w * h; ++i) inter[i] = 0.37f * i - 2.1f + 0.013f * i * i;
  const float fractions[] = {0.f, 0.25f, 0.7310f, 0.999f};
  for (int q = -3; q <= h + 1; ++q)
    for (int p = -3; p <= w + 1; ++p)
      for (const float fa : fractions)
        for (const float fb : fractions) {
          float expected = 0.f;
          for (int dq = 0; dq < 2; ++dq)
            for (int dp = 0; dp < 2; ++dp) {
              if (q + dq < 0 || q + dq >= h || p + dp < 0 || p + dp >= w) continue;
              expected += (dq ? fb : 1.f - fb) * (dp ? fa : 1.f - fa) * inter[(q + dq) * w + p + dp];
            }
          const float got = kernels::SampleIntermediate(inter.data(), w, h, p, q, fa, fb);
          EXPECT_EQ(got, expected) << "p " << p << " q " << q << " fa " << fa << " fb " << fb;
          EXPECT_EQ(std::signbit(got), std::signbit(expected))  // +0 outside, as before
              << "p " << p << " q " << q << " fa " << fa << " fb " << fb;
        }
}

// A cone-beam warp tap whose ray runs parallel to the slices, or away from them, samples
// nothing (scale 0, a tap outside the image), without dividing its way to NaN.
TEST(RenderKernels, ConeWarpTapOfARayThatTurnsAwayIsZero) {
  kernels::ConeShearSetup s{};
  s.valid = 1;
  s.src = {2.f, 2.f, -10.f};
  s.det = {0.f, 0.f, 20.f};
  s.du = {1.f, 0.f, 0.f};
  s.dv = {0.f, 1.f, 0.f};
  s.spacing[0] = s.spacing[1] = s.spacing[2] = 1.f;
  s.mid = 4.f;
  s.da = s.db = 1.f;
  s.inter_w = s.inter_h = 4;
  const std::vector<float> inter(16, 1.f);
  const kernels::WarpTap in = kernels::WarpPixelTap(s, 2, 2);  // straight through: (2, 2)
  EXPECT_EQ(in.p, 2);
  EXPECT_EQ(in.q, 2);
  EXPECT_FLOAT_EQ(in.scale, 1.f);
  EXPECT_FLOAT_EQ(kernels::WarpPixel(s, inter.data(), 2, 2), 1.f);
  for (const float z : {-10.f, -30.f}) {  // the intensifier level with the source, then behind it
    s.det.z = z;
    const kernels::WarpTap away = kernels::WarpPixelTap(s, 2, 2);
    EXPECT_EQ(away.scale, 0.f);
    EXPECT_TRUE(away.p < -1 || away.q < -1) << away.p << ", " << away.q;
    EXPECT_EQ(kernels::WarpPixel(s, inter.data(), 2, 2), 0.f);
  }
}

TEST(RenderKernels, ConeShearWarpBodiesEqualCpuLoops) { ConeShearWarpMatchesBodies(false); }
TEST(RenderKernels, ConeShearWarpSkipsTheGapsOfHollowVolumes) { ConeShearWarpMatchesBodies(true); }

}  // namespace
}  // namespace fluororeg
