// Renderer entry points: validation, dispatch to CUDA, and the CPU backend (all cores).
#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "fluororeg/parallel.h"
#include "render_internal.h"

namespace fluororeg {

namespace {

void ValidateScales(const double* scales, int n) {
  for (int i = 0; i < n; ++i) {
    if (!(scales[i] > 0) || !std::isfinite(scales[i])) {
      throw std::invalid_argument("scale " + std::to_string(i) + " = " +
                                  std::to_string(scales[i]) + " must be finite and positive");
    }
  }
}

void ValidatePoints(const double* points, int m) {
  if (m < 0) throw std::invalid_argument("point count " + std::to_string(m) + " is negative");
  for (int i = 0; i < 3 * m; ++i) {
    if (!std::isfinite(points[i])) {
      throw std::invalid_argument("point " + std::to_string(i / 3) + " holds a non-finite value");
    }
  }
}

// The CPU loop of the point projections: project(i, xf, X [3], xy [2], fov) with xf pose i as
// a transform (camera or world from model),
// for every pose i and model point j (outputs [n, m, 2] px and [n, m]).
template <typename Project>
void ForEachPosePoint(const double* poses, int n, const double* points, int m, double* out_xy,
                      uint8_t* in_fov, Project&& project) {
  for (int i = 0; i < n; ++i) {
    const Affine3<double> xf = AffineFromPose(poses + 6 * i);
    for (int j = 0; j < m; ++j) {
      const long long o = static_cast<long long>(i) * m + j;
      project(i, xf, points + 3 * j, out_xy + 2 * o, in_fov + o);
    }
  }
}

// Shear phase for intermediate rows [q_begin, q_end) of one pose: slice-major so that each
// slice's constant bilinear weights stream over contiguous rows.
void ShearRows(const kernels::ShearWarpSetup& s, const internal::PaddedSlices& vol, int q_begin,
               int q_end, float* inter) {
  const long long slice_size = static_cast<long long>(s.slice_w) * s.slice_h;
  for (int k = 0; k < s.n_slices; ++k) {
    int oa, ob;
    float fa, fb;
    kernels::SliceOffsets(s, k, &oa, &ob, &fa, &fb);
    int p_begin, p_end;
    kernels::SliceColumnRange(s, oa, &p_begin, &p_end);
    if (p_begin >= p_end) continue;
    const float w00 = (1.f - fa) * (1.f - fb), w10 = fa * (1.f - fb);
    const float w01 = (1.f - fa) * fb, w11 = fa * fb;
    const float* slice = vol.data.data() + k * slice_size;
    const int32_t* ext = vol.row_extent.data() + 2LL * k * s.slice_h;
    for (int q = q_begin; q < q_end; ++q) {
      const int row = q + ob + 1;
      if (row < 0 || row > s.slice_h - 2) continue;
      // Non-zero padded columns of the two rows read; a sample at padded column col reads
      // col and col + 1, so it matters for col in [first - 1, last].
      const int first = std::min(ext[2 * row], ext[2 * (row + 1)]);
      const int last = std::max(ext[2 * row + 1], ext[2 * (row + 1) + 1]);
      if (first > last) continue;
      const int pb = std::max(p_begin, first - 1 - oa - 1);
      const int pe = std::min(p_end, last - oa - 1 + 1);
      const float* r0 = slice + static_cast<long long>(row) * s.slice_w + oa + 1;
      const float* r1 = r0 + s.slice_w;
      float* out = inter + static_cast<long long>(q) * s.inter_w;
      for (int p = pb; p < pe; ++p) {
        out[p] += w00 * r0[p] + w10 * r0[p + 1] + w01 * r1[p] + w11 * r1[p + 1];
      }
    }
  }
  const float w = static_cast<float>(s.weight);
  for (long long i = static_cast<long long>(q_begin) * s.inter_w;
       i < static_cast<long long>(q_end) * s.inter_w; ++i) {
    inter[i] *= w;
  }
}

}  // namespace

void RenderParallelDrr(const VolumeGrid& volume, const ParallelCamera& camera,
                       const double* poses, const double* scales, int n, float* out,
                       const RenderOptions& options) {
  ValidateVolume(volume);
  ValidateParallelCamera(camera);
  ValidatePoses(poses, n);
  ValidateScales(scales, n);
  if (n == 0) return;
  if (options.device == Device::kCuda) {
    internal::RequireCuda();
#if defined(FLUORO_WITH_CUDA)
    internal::RenderParallelDrrCuda(volume, camera, poses, scales, n, out);
#endif
    return;
  }
  const int n_threads = ResolveThreadCount(options.num_threads);
  std::vector<kernels::ShearWarpSetup> setups(n);
  std::array<bool, 3> needed{false, false, false};
  for (int i = 0; i < n; ++i) {
    setups[i] = internal::MakeShearWarpSetup(volume, camera, poses + 6 * i, scales[i]);
    needed[setups[i].axis] = true;
  }
  std::array<internal::PaddedSlices, 3> padded;
  {
    std::vector<int> axes;
    for (int c = 0; c < 3; ++c)
      if (needed[c]) axes.push_back(c);
    ParallelFor(static_cast<long long>(axes.size()), n_threads, [&](long long t) {
      padded[axes[t]] = internal::MakePaddedSlices(volume, axes[t]);
    });
  }
  // Intermediate images, one per pose.
  std::vector<long long> offset(n + 1, 0);
  for (int i = 0; i < n; ++i) {
    offset[i + 1] = offset[i] + static_cast<long long>(setups[i].inter_w) * setups[i].inter_h;
  }
  std::vector<float> inter(offset[n], 0.f);
  // Split each pose into row bands so that a single DRR also uses every core.
  const int bands = std::max(1, std::min(16, (n_threads + n - 1) / n * 2));
  ParallelFor(static_cast<long long>(n) * bands, n_threads, [&](long long t) {
    const int i = static_cast<int>(t / bands), band = static_cast<int>(t % bands);
    const auto& s = setups[i];
    if (s.inter_h == 0) return;
    const int q0 = static_cast<int>(static_cast<long long>(s.inter_h) * band / bands);
    const int q1 = static_cast<int>(static_cast<long long>(s.inter_h) * (band + 1) / bands);
    if (q0 < q1) ShearRows(s, padded[s.axis], q0, q1, inter.data() + offset[i]);
  });
  const long long image_size = static_cast<long long>(camera.width) * camera.height;
  ParallelFor(static_cast<long long>(n) * bands, n_threads, [&](long long t) {
    const int i = static_cast<int>(t / bands), band = static_cast<int>(t % bands);
    const auto& s = setups[i];
    const int y0 = static_cast<int>(static_cast<long long>(camera.height) * band / bands);
    const int y1 = static_cast<int>(static_cast<long long>(camera.height) * (band + 1) / bands);
    float* img = out + i * image_size;
    for (int y = y0; y < y1; ++y) {
      for (int x = 0; x < camera.width; ++x) {
        img[static_cast<long long>(y) * camera.width + x] =
            s.inter_h == 0 ? 0.f : kernels::WarpPixel(s, inter.data() + offset[i], x, y);
      }
    }
  });
}

void RenderConeDrr(const VolumeGrid& volume, const ConeView* views, const double* poses, int n,
                   float* out, const RenderOptions& options) {
  ValidateVolume(volume);
  ValidatePoses(poses, n);
  for (int i = 0; i < n; ++i) ValidateConeView(views[i], i);
  if (!(options.step_voxels > 0.01) || !(options.step_voxels <= 16)) {
    throw std::invalid_argument("step_voxels = " + std::to_string(options.step_voxels) +
                                " must lie in (0.01, 16]");
  }
  if (n == 0) return;
  const int W = views[0].width, H = views[0].height;
  for (int i = 1; i < n; ++i) {
    if (views[i].width != W || views[i].height != H) {
      throw std::invalid_argument("view " + std::to_string(i) + " is " +
                                  std::to_string(views[i].width) + " x " +
                                  std::to_string(views[i].height) +
                                  " px but view 0 is " + std::to_string(W) + " x " +
                                  std::to_string(H) + ": one call needs one image size");
    }
  }
  if (options.device == Device::kCuda) {
    internal::RequireCuda();
#if defined(FLUORO_WITH_CUDA)
    internal::RenderConeDrrCuda(volume, views, poses, n, out, options.step_voxels);
#endif
    return;
  }
  int bx, by, bz;
  const std::vector<uint8_t> occupancy = internal::MakeOccupancy(volume, &bx, &by, &bz);
  std::vector<kernels::ConeRaySetup> setups(n);
  for (int i = 0; i < n; ++i) {
    setups[i] = internal::MakeConeRaySetup(volume, views[i], poses + 6 * i, options.step_voxels);
  }
  const long long rows = static_cast<long long>(n) * H;
  ParallelFor(rows, options.num_threads, [&](long long t) {
    const int i = static_cast<int>(t / H), y = static_cast<int>(t % H);
    float* row = out + (static_cast<long long>(i) * H + y) * W;
    for (int x = 0; x < W; ++x) {
      row[x] = kernels::ConeRayIntegral(setups[i], volume.data, occupancy.data(), x, y);
    }
  });
}

void ProjectPointsParallel(const ParallelCamera& camera, const double* poses,
                           const double* scales, int n, const double* points, int m,
                           double* out_xy, uint8_t* in_fov, const RenderOptions& options) {
  ValidateParallelCamera(camera);
  ValidatePoses(poses, n);
  ValidateScales(scales, n);
  ValidatePoints(points, m);
  if (options.device == Device::kCuda) {
    internal::RequireCuda();
#if defined(FLUORO_WITH_CUDA)
    internal::ProjectPointsCuda(false, camera, nullptr, poses, scales, n, points, m, out_xy,
                                in_fov);
#endif
    return;
  }
  ForEachPosePoint(poses, n, points, m, out_xy, in_fov,
                   [&](int i, const Affine3<double>& xf, const double* X, double* xy, uint8_t* fov) {
                     kernels::ProjectParallelPoint(camera, xf, scales[i], X, xy, fov);
                   });
}

void ProjectPointsCone(const ConeView* views, const double* poses, int n, const double* points,
                       int m, double* out_xy, uint8_t* in_fov, const RenderOptions& options) {
  ValidatePoses(poses, n);
  for (int i = 0; i < n; ++i) ValidateConeView(views[i], i);
  ValidatePoints(points, m);
  if (options.device == Device::kCuda) {
    internal::RequireCuda();
#if defined(FLUORO_WITH_CUDA)
    internal::ProjectPointsCuda(true, ParallelCamera{}, views, poses, nullptr, n, points, m,
                                out_xy, in_fov);
#endif
    return;
  }
  ForEachPosePoint(poses, n, points, m, out_xy, in_fov,
                   [&](int i, const Affine3<double>& xf, const double* X, double* xy, uint8_t* fov) {
                     kernels::ProjectConePoint(views[i], xf, X, xy, fov);
                   });
}

}  // namespace fluororeg
