// Renderer entry points: validation, dispatch to CUDA, and the CPU backend (all cores).
#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "fluororeg/limits.h"
#include "fluororeg/parallel.h"
#include "common/cpu_clones.h"
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
  limits::CheckRange(m, 0, limits::kMaxPoints, "point count");
  if (m > 0 && points == nullptr) throw std::invalid_argument("points is null");
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

// The cone-beam options of a call: the method, the marching step and stop_above.
void ValidateConeOptions(const RenderOptions& options) {
  if (!(options.step_voxels > 0.01) || !(options.step_voxels <= 16)) {
    throw std::invalid_argument("step_voxels = " + std::to_string(options.step_voxels) +
                                " must lie in (0.01, 16]");
  }
  if (options.cone_method != ConeMethod::kRayMarch &&
      options.cone_method != ConeMethod::kShearWarp) {
    throw std::invalid_argument("cone_method = " +
                                std::to_string(static_cast<int>(options.cone_method)) +
                                " is unknown: expected kRayMarch (0) or kShearWarp (1)");
  }
  if (!(options.stop_above >= 0)) {
    throw std::invalid_argument("stop_above = " + std::to_string(options.stop_above) +
                                " must be >= 0 (infinity: never stop)");
  }
}

// The ray setups of n cone-beam (view, pose) pairs: views [n], or one view for every pose
// (view_stride 0); poses [n, 6]; the step and stop_above of `options`. Prepares the volume's
// occupancy first.
std::vector<kernels::ConeRaySetup> ConeSetups(RenderVolume::State& state, const ConeView* views,
                                              int view_stride, const double* poses, int n,
                                              const RenderOptions& options) {
  state.PrepareCone();
  std::vector<kernels::ConeRaySetup> setups(n);
  for (int i = 0; i < n; ++i) {
    setups[i] = internal::MakeConeRaySetup(state, views[i * view_stride], poses + 6 * i,
                                           options.step_voxels);
    setups[i].stop_above = static_cast<float>(options.stop_above);
  }
  return setups;
}

void RequireHostOutput(const RenderOptions& options) {
  if (options.output_on_device && options.device != Device::kCuda) {
    throw std::invalid_argument(
        "output_on_device = true needs device = cuda: the CPU backend writes host memory");
  }
}

// Images per chunk of the CPU shear-warp renderers, and the most floats of intermediate images
// one chunk holds (a chunk ends early when its images' intermediates would exceed it; a chunk
// always holds at least one image).
constexpr int kShearChunk = 256;
constexpr long long kShearChunkFloats = 64LL << 20;  // 256 MiB
// Base-plane rows per shear task, and the most images (of one slice axis, neighbours in
// ShearSortKey) whose bands one task shears together (see ShearBandCpu).
constexpr int kShearBand = 32;
constexpr int kShearGroup = 16;

// The order of the images within a slice axis, so that a group's images read nearly the same
// slice rows at one base-plane row: the parallel beam's shear per slice brings that about. No
// key does in general for the cone beam (each image's slices scale about its own source); its
// source position along b keeps the order deterministic.
double ShearSortKey(const kernels::ShearWarpSetup& s) { return s.sb; }
double ShearSortKey(const kernels::ConeShearSetup& s) { return s.src.y; }
// The base-plane row of intermediate row 0, in intermediate rows (the bands of a group are
// counted in them): the parallel beam's grid is the base plane's; the cone beam's has the
// image's pitch.
int ShearRowOrigin(const kernels::ShearWarpSetup& s) { return s.b0; }
int ShearRowOrigin(const kernels::ConeShearSetup& s) {
  return static_cast<int>(std::floor(s.b0 / s.db));
}

// The CPU sink of the perspective shear (the cone beam's form of kernels::AddToRow): each
// (slice, row) blends its two padded rows once over the columns its taps read, then adds the
// column taps, kept per image and slice (every row of a band reuses them). Adds to each pixel
// what kernels::PerspectiveSample computes.
struct PerspectiveTaps {
  float g = 0.f, ea = 0.f;
  int count = -1;
  std::vector<int> column;   // [inter_w] left padded column
  std::vector<float> frac;   // [inter_w]
  void Update(float g_new, float ea_new, int last_col, int inter_w) {
    if (g_new == g && ea_new == ea && inter_w == count) return;
    g = g_new;
    ea = ea_new;
    count = inter_w;
    column.resize(inter_w);
    frac.resize(inter_w);
    for (int p = 0; p < inter_w; ++p) {
      kernels::PerspectiveTap(g, ea, last_col, p, &column[p], &frac[p]);
    }
  }
};
struct PerspectiveAddToRow {
  float* row;             // [inter_w]
  int inter_w;
  PerspectiveTaps* taps;  // this image's
  float* blend;           // [slice_w] scratch
  __attribute__((always_inline)) void operator()(int pb, int pe, const float* r0,
                                                 const float* r1, float g, float ea, float fb,
                                                 int last_col) {
    taps->Update(g, ea, last_col, inter_w);
    const int* __restrict__ col = taps->column.data();
    const float* __restrict__ fa = taps->frac.data();
    float* __restrict__ out = row;
    float* __restrict__ mix = blend;
    const int i_end = col[pe - 1] + 2;
    for (int i = col[pb]; i < i_end; ++i) mix[i] = kernels::BlendRows(r0, r1, fb, i);
    for (int p = pb; p < pe; ++p) {
      const float t0 = mix[col[p]], t1 = mix[col[p] + 1];
      out[p] += t0 + fa[p] * (t1 - t0);
    }
  }
};

// One band of base-plane rows [B, B + kShearBand) for a group of images that share a slice
// axis: for each image g, its intermediate rows [q0[g], q1[g]) (the band's rows less its
// ShearRowOrigin) into rows[g] ([q1[g] - q0[g], inter_w], zeroed). The shared shear body runs
// slice by slice and, within a slice, image by image over the band: the images of a group read
// nearly the same slice rows (same band of the base plane, sorted by ShearSortKey), so each
// slice is fetched from memory once per group instead of once per image (the loop is bound by
// memory traffic: the whole volume streams through it once per pass). Every pixel still adds
// the same terms in slice order, so values do not depend on the grouping or the thread count.
// Then ShearWeight. One body for both factorisations (sink(g, row) gives image g's sink of an
// intermediate row), compiled into each CPU clone.
template <typename Setup, typename Sink>
__attribute__((always_inline)) inline void ShearBand(const Setup* const* setups, int group,
                                                     const internal::PaddedSlices& slices,
                                                     const int* q0, const int* q1,
                                                     float* const* rows, Sink&& sink) {
  const int n_slices = setups[0]->n_slices;
  const kernels::SliceStack stack = slices.Stack();
  for (int k = 0; k < n_slices; ++k) {
    for (int g = 0; g < group; ++g) {
      const Setup& s = *setups[g];
      for (int q = q0[g]; q < q1[g]; ++q) {
        auto add = sink(g, rows[g] + static_cast<long long>(q - q0[g]) * s.inter_w);
        kernels::ShearSliceRow(s, stack, k, q, 0, s.inter_w, add);
      }
    }
  }
  for (int g = 0; g < group; ++g) {
    const float w = kernels::ShearWeight(*setups[g]);
    if (w == 1.f) continue;
    const long long count = static_cast<long long>(q1[g] - q0[g]) * setups[g]->inter_w;
    for (long long i = 0; i < count; ++i) rows[g][i] *= w;
  }
}
FLUORO_CPU_CLONES void ShearBandCpu(const kernels::ShearWarpSetup* const* setups, int group,
                                    const internal::PaddedSlices& slices, const int* q0,
                                    const int* q1, float* const* rows) {
  ShearBand(setups, group, slices, q0, q1, rows,
            [](int, float* row) { return kernels::AddToRow{row}; });
}
FLUORO_CPU_CLONES void ShearBandCpu(const kernels::ConeShearSetup* const* setups, int group,
                                    const internal::PaddedSlices& slices, const int* q0,
                                    const int* q1, float* const* rows) {
  std::vector<float> blend(slices.slice_w);
  std::vector<PerspectiveTaps> taps(group);
  ShearBand(setups, group, slices, q0, q1, rows, [&](int g, float* row) {
    return PerspectiveAddToRow{row, setups[g]->inter_w, &taps[g], blend.data()};
  });
}

// Output row y ([W] floats at img) of one image from its intermediate image: kernels::WarpPixel
// per pixel, or zeros for an image without an intermediate image (inter_h == 0). The setup is
// copied so that the loops do not reload it after each store to img.
FLUORO_CPU_CLONES void WarpRowCpu(const kernels::ShearWarpSetup& s, const float* inter, int y,
                                  int W, float* img) {
  if (s.inter_h == 0) {
    std::fill(img, img + W, 0.f);
    return;
  }
  const kernels::ShearWarpSetup local = s;
  for (int x = 0; x < W; ++x) img[x] = kernels::WarpPixel(local, inter, x, y);
}
// The cone beam's taps cost a division and a square root per pixel: they are computed for a
// run of pixels first (a loop without memory reads, which vectorises), then sampled
// (WarpPixel's two halves); the row warps in about two thirds of the time.
FLUORO_CPU_CLONES void WarpRowCpu(const kernels::ConeShearSetup& s, const float* inter, int y,
                                  int W, float* img) {
  if (s.inter_h == 0) {
    std::fill(img, img + W, 0.f);
    return;
  }
  constexpr int kRun = 64;
  const kernels::ConeShearSetup local = s;
  int p[kRun], q[kRun];
  float fa[kRun], fb[kRun], scale[kRun];
  for (int x0 = 0; x0 < W; x0 += kRun) {
    const int n = std::min(kRun, W - x0);
    for (int i = 0; i < n; ++i) {
      const kernels::WarpTap t = kernels::WarpPixelTap(local, x0 + i, y);
      p[i] = t.p;
      q[i] = t.q;
      fa[i] = t.fa;
      fb[i] = t.fb;
      scale[i] = t.scale;
    }
    for (int i = 0; i < n; ++i) {
      img[x0 + i] = kernels::WarpSample(local, inter, {p[i], q[i], fa[i], fb[i], scale[i]});
    }
  }
}

// Shear-warp DRRs out [n, H, W] on the CPU for either factorisation; images without an
// intermediate image (inter_h == 0) are zero.
template <typename Setup>
void RenderShearWarpCpu(RenderVolume::State& state, const Setup* setups, int n, int W, int H,
                        float* out, int n_threads) {
  const long long image_size = static_cast<long long>(W) * H;
  std::vector<float> inter;
  std::vector<long long> offset;
  for (int c0 = 0, nc = 0; c0 < n; c0 += nc) {
    const Setup* cs = setups + c0;
    offset.assign(1, 0);
    for (nc = 0; nc < std::min(kShearChunk, n - c0); ++nc) {
      const long long next = offset[nc] + static_cast<long long>(cs[nc].inter_w) * cs[nc].inter_h;
      if (nc > 0 && next > kShearChunkFloats) break;
      offset.push_back(next);
      if (cs[nc].inter_h > 0) state.Slices(cs[nc].axis);  // build before the threads read it
    }
    inter.assign(offset[nc], 0.f);
    // Shear: images with an intermediate image, grouped by slice axis and sorted by
    // ShearSortKey, kShearGroup at most per group; one task per (group, band of kShearBand
    // base-plane rows).
    std::vector<int> order;
    for (int i = 0; i < nc; ++i)
      if (cs[i].inter_h > 0) order.push_back(i);
    std::sort(order.begin(), order.end(), [&](int x, int y) {
      if (cs[x].axis != cs[y].axis) return cs[x].axis < cs[y].axis;
      const double kx = ShearSortKey(cs[x]), ky = ShearSortKey(cs[y]);
      if (kx != ky) return kx < ky;
      return x < y;
    });
    struct ShearGroup {
      int begin, end;     // order[begin, end)
      int row0;           // first base-plane row (min ShearRowOrigin)
      long long band0;    // first task
    };
    std::vector<ShearGroup> groups;
    long long n_tasks = 0;
    for (size_t g0 = 0; g0 < order.size();) {
      size_t g1 = g0 + 1;
      while (g1 < order.size() && g1 - g0 < kShearGroup &&
             cs[order[g1]].axis == cs[order[g0]].axis)
        ++g1;
      int lo = ShearRowOrigin(cs[order[g0]]), hi = lo;
      for (size_t g = g0; g < g1; ++g) {
        lo = std::min(lo, ShearRowOrigin(cs[order[g]]));
        hi = std::max(hi, ShearRowOrigin(cs[order[g]]) + cs[order[g]].inter_h);
      }
      groups.push_back({static_cast<int>(g0), static_cast<int>(g1), lo, n_tasks});
      n_tasks += (hi - lo + kShearBand - 1) / kShearBand;
      g0 = g1;
    }
    ParallelFor(n_tasks, n_threads, [&](long long t) {
      size_t gi = 0;
      while (gi + 1 < groups.size() && groups[gi + 1].band0 <= t) ++gi;
      const ShearGroup& grp = groups[gi];
      const int band_row = grp.row0 + static_cast<int>(t - grp.band0) * kShearBand;
      const Setup* gs[kShearGroup];
      int q0[kShearGroup], q1[kShearGroup];
      float* rows[kShearGroup];
      int group = 0;
      for (int g = grp.begin; g < grp.end; ++g) {
        const Setup& s = cs[order[g]];
        const int a = std::max(0, band_row - ShearRowOrigin(s));
        const int b = std::min(s.inter_h, band_row + kShearBand - ShearRowOrigin(s));
        if (a >= b) continue;
        gs[group] = &s;
        q0[group] = a;
        q1[group] = b;
        rows[group] = inter.data() + offset[order[g]] + static_cast<long long>(a) * s.inter_w;
        ++group;
      }
      if (group > 0) ShearBandCpu(gs, group, state.slices[gs[0]->axis], q0, q1, rows);
    });
    // Warp: one task per (image, output row).
    ParallelFor(static_cast<long long>(nc) * H, n_threads, [&](long long t) {
      const int i = static_cast<int>(t / H), y = static_cast<int>(t % H);
      WarpRowCpu(cs[i], inter.data() + offset[i], y, W,
                 out + (c0 + i) * image_size + static_cast<long long>(y) * W);
    });
  }
}

// Pixels [x0, x1) x [y0, y1) of one cone-beam image [H, W].
FLUORO_CPU_CLONES void ConeTileCpu(const kernels::ConeRaySetup& s,
                                   const kernels::ArraySampler& sampler,
                                   const uint8_t* occupancy, int x0, int x1, int y0, int y1,
                                   int W, float* img) {
  for (int y = y0; y < y1; ++y) {
    for (int x = x0; x < x1; ++x) {
      img[static_cast<long long>(y) * W + x] =
          kernels::ConeRayIntegral(s, sampler, occupancy, x, y);
    }
  }
}

// Listed pixels [b, e) of one cone-beam view for every pose, out [n, m]. Pixel-major in blocks
// of kPixelBlock: the poses of one call are usually close (the refinement's finite
// differences), so their rays through one block of pixels reuse the same cached voxels.
// With pose frames [n] (else nullptr), also the pose gradients grad [n, 6, m].
FLUORO_CPU_CLONES void ConePixelsCpu(const kernels::ConeRaySetup* setups, int n,
                                     const kernels::ArraySampler& sampler,
                                     const uint8_t* occupancy, const int32_t* pixels, long long m,
                                     long long b, long long e, int W, float* out,
                                     const kernels::ConeRayPoseFrame* frames, float* grad) {
  constexpr long long kPixelBlock = 16;
  for (long long b0 = b; b0 < e; b0 += kPixelBlock) {
    const long long b1 = std::min(e, b0 + kPixelBlock);
    for (int k = 0; k < n; ++k) {
      float* o = out + k * m;
      for (long long i = b0; i < b1; ++i) {
        const int x = pixels[i] % W, y = pixels[i] / W;
        if (!frames) {
          o[i] = kernels::ConeRayIntegral(setups[k], sampler, occupancy, x, y);
          continue;
        }
        float sums[7], d[6];
        o[i] = kernels::ConeRayIntegral<kernels::ArraySampler, true>(setups[k], sampler, occupancy,
                                                                      x, y, 0, 1, sums);
        kernels::ConeRayPoseGradient(setups[k], frames[k], x, y, sums, d);
        for (int j = 0; j < 6; ++j) grad[(6 * k + j) * m + i] = d[j];
      }
    }
  }
}

}  // namespace

void RenderParallelDrr(const RenderVolume& volume, const ParallelCamera& camera,
                       const double* poses, const double* scales, int n, float* out,
                       const RenderOptions& options) {
  ValidateParallelCamera(camera);
  ValidatePoses(poses, n);
  ValidateScales(scales, n);
  RequireHostOutput(options);
  if (n == 0) return;
  RenderVolume::State& state = volume.state();
  std::vector<kernels::ShearWarpSetup> setups(n);
  for (int i = 0; i < n; ++i) {
    setups[i] = internal::MakeShearWarpSetup(state.grid, camera, poses + 6 * i, scales[i]);
  }
  if (options.device == Device::kCuda) {
    internal::RequireCuda();
#if defined(FLUORO_WITH_CUDA)
    std::lock_guard<std::mutex> lock(state.cuda_mutex);
    internal::RenderShearWarpCuda(state, setups.data(), n, camera.width, camera.height, out,
                                  options.output_on_device);
#endif
    return;
  }
  RenderShearWarpCpu(state, setups.data(), n, camera.width, camera.height, out,
                     ResolveThreadCount(options.num_threads));
}

void RenderParallelDrr(const VolumeGrid& volume, const ParallelCamera& camera,
                       const double* poses, const double* scales, int n, float* out,
                       const RenderOptions& options) {
  const RenderVolume view = RenderVolume::View(volume);
  RenderParallelDrr(view, camera, poses, scales, n, out, options);
}

void RenderConeDrr(const RenderVolume& volume, const ConeView* views, const double* poses,
                   int n, float* out, const RenderOptions& options) {
  ValidatePoses(poses, n);
  for (int i = 0; i < n; ++i) ValidateConeView(views[i], i);
  ValidateConeOptions(options);
  RequireHostOutput(options);
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
  RenderVolume::State& state = volume.state();
  const long long image_size = static_cast<long long>(W) * H;
  // The images to ray-march: all of them, or those the shear-warp factorisation cannot take
  // (rendered as zero images by the shear-warp, then overwritten).
  std::vector<int> march;
  if (options.cone_method == ConeMethod::kShearWarp) {
    std::vector<kernels::ConeShearSetup> shear(n);
    for (int i = 0; i < n; ++i) {
      shear[i] = internal::MakeConeShearSetup(state.grid, views[i], poses + 6 * i);
      if (!shear[i].valid) march.push_back(i);
    }
    if (options.device == Device::kCuda) {
      internal::RequireCuda();
#if defined(FLUORO_WITH_CUDA)
      std::lock_guard<std::mutex> lock(state.cuda_mutex);
      internal::RenderShearWarpCuda(state, shear.data(), n, W, H, out, options.output_on_device);
#endif
    } else {
      RenderShearWarpCpu(state, shear.data(), n, W, H, out,
                         ResolveThreadCount(options.num_threads));
    }
  } else {
    march.resize(n);
    for (int i = 0; i < n; ++i) march[i] = i;
  }
  if (march.empty()) return;
  const int m = static_cast<int>(march.size());
  const std::vector<kernels::ConeRaySetup> setups = ConeSetups(state, views, 1, poses, n, options);
  if (options.device == Device::kCuda) {
    internal::RequireCuda();
#if defined(FLUORO_WITH_CUDA)
    std::lock_guard<std::mutex> lock(state.cuda_mutex);
    if (m == n) {
      internal::RenderConeDrrCuda(state, setups.data(), n, W, H, out, options);
    } else {  // the few images the shear-warp left, one by one
      for (const int i : march) {
        internal::RenderConeDrrCuda(state, setups.data() + i, 1, W, H, out + i * image_size,
                                    options);
      }
    }
#endif
    return;
  }
  const VolumeGrid& g = state.grid;
  const kernels::ArraySampler sampler{g.data, g.nx, g.ny, g.nz};
  // One task per tile of kTile x kTile pixels: neighbouring rays share cache lines.
  constexpr int kTile = 8;
  const int tiles_x = (W + kTile - 1) / kTile, tiles_y = (H + kTile - 1) / kTile;
  const long long tiles_per_image = static_cast<long long>(tiles_x) * tiles_y;
  ParallelFor(static_cast<long long>(m) * tiles_per_image, options.num_threads, [&](long long t) {
    const int j = static_cast<int>(t / tiles_per_image);
    const int tile = static_cast<int>(t % tiles_per_image);
    const int x0 = (tile % tiles_x) * kTile, y0 = (tile / tiles_x) * kTile;
    const int x1 = std::min(x0 + kTile, W), y1 = std::min(y0 + kTile, H);
    ConeTileCpu(setups[march[j]], sampler, state.occupancy.data(), x0, x1, y0, y1, W,
                out + march[j] * image_size);
  });
}

void RenderConePixels(const RenderVolume& volume, const ConeView& view, const int32_t* pixels,
                      int m, const double* poses, int n, float* out,
                      const RenderOptions& options) {
  ConePixelRequest request;
  request.view = view;
  request.pixels = pixels;
  request.num_pixels = m;
  request.poses = poses;
  request.num_poses = n;
  request.out = out;
  RenderConePixelsBatch(volume, &request, 1, options);
}

void RenderConePixelsBatch(const RenderVolume& volume, const ConePixelRequest* requests, int n,
                           const RenderOptions& options) {
  ValidateConeOptions(options);
  RequireHostOutput(options);
  if (options.cone_method != ConeMethod::kRayMarch) {
    throw std::invalid_argument(
        "RenderConePixels ray-marches: cone_method must be kRayMarch (shear-warp renders whole "
        "images only)");
  }
  if (n < 0) throw std::invalid_argument("request count " + std::to_string(n) + " is negative");
  // The setups of all poses in request order (setup_begin[r] ..); gradients: some request wants
  // pose gradients.
  std::vector<int> setup_begin(n + 1, 0);
  bool gradients = false;
  for (int r = 0; r < n; ++r) {
    const ConePixelRequest& q = requests[r];
    if (q.num_pixels < 0)
      throw std::invalid_argument("pixel count " + std::to_string(q.num_pixels) + " is negative");
    ValidatePoses(q.poses, q.num_poses);
    ValidateConeView(q.view, r);
    if (!(q.stop_above >= 0)) {
      throw std::invalid_argument("request " + std::to_string(r) + ": stop_above = " +
                                  std::to_string(q.stop_above) + " must be >= 0 (infinity: never stop)");
    }
    if (q.pose_gradient && (std::isfinite(options.stop_above) || std::isfinite(q.stop_above) ||
                            (options.device == Device::kCuda && options.cuda_texture))) {
      throw std::invalid_argument(
          "pose gradients need whole rays and the exact sampler: stop_above must be infinite and "
          "cuda_texture false");
    }
    gradients |= q.pose_gradient != nullptr;
    setup_begin[r + 1] = setup_begin[r] + (q.num_pixels > 0 ? q.num_poses : 0);
  }
  // Every pixel index checked, and the setups made, request by request on the threads (the
  // refinement gathers millions of pixels per call).
  RenderVolume::State& state = volume.state();
  std::vector<kernels::ConeRaySetup> setups(setup_begin[n]);
  // The pose frames of the requests that want pose gradients (at their setups' indices).
  std::vector<kernels::ConeRayPoseFrame> frames(gradients ? setup_begin[n] : 0);
  ParallelFor(n, options.num_threads, [&](long long r) {
    const ConePixelRequest& q = requests[r];
    const long long size = static_cast<long long>(q.view.width) * q.view.height;
    for (int i = 0; i < q.num_pixels; ++i) {
      if (q.pixels[i] < 0 || q.pixels[i] >= size) {
        throw std::invalid_argument("pixel index " + std::to_string(q.pixels[i]) + " (entry " +
                                    std::to_string(i) + ") lies outside the " +
                                    std::to_string(q.view.width) + " x " +
                                    std::to_string(q.view.height) + " image");
      }
    }
    if (setup_begin[r + 1] == setup_begin[r]) return;
    std::vector<kernels::ConeRaySetup> s = ConeSetups(state, &q.view, 0, q.poses, q.num_poses, options);
    for (kernels::ConeRaySetup& setup : s) {
      setup.stop_above = std::min(setup.stop_above, static_cast<float>(q.stop_above));
    }
    std::copy(s.begin(), s.end(), setups.begin() + setup_begin[r]);
    if (q.pose_gradient) {
      for (int k = 0; k < q.num_poses; ++k) {
        frames[setup_begin[r] + k] = internal::MakeConeRayPoseFrame(state.grid, q.view, q.poses + 6 * k);
      }
    }
  });
  if (setup_begin[n] == 0) return;
  if (options.device == Device::kCuda) {
    internal::RequireCuda();
#if defined(FLUORO_WITH_CUDA)
    std::lock_guard<std::mutex> lock(state.cuda_mutex);
    internal::RenderConePixelsCuda(state, setups.data(), gradients ? frames.data() : nullptr,
                                   requests, n, options);
#endif
    return;
  }
  const VolumeGrid& g = state.grid;
  const kernels::ArraySampler sampler{g.data, g.nx, g.ny, g.nz};
  constexpr long long kChunk = 64;  // pixels per task (all poses of the request)
  std::vector<long long> task_begin(n + 1, 0);
  for (int r = 0; r < n; ++r) {
    const long long m = setup_begin[r + 1] > setup_begin[r] ? requests[r].num_pixels : 0;
    task_begin[r + 1] = task_begin[r] + (m + kChunk - 1) / kChunk;
  }
  ParallelFor(task_begin[n], options.num_threads, [&](long long t) {
    const int r = static_cast<int>(std::upper_bound(task_begin.begin(), task_begin.end(), t) -
                                   task_begin.begin()) - 1;
    const ConePixelRequest& q = requests[r];
    const long long b = (t - task_begin[r]) * kChunk;
    const long long e = std::min<long long>(q.num_pixels, b + kChunk);
    ConePixelsCpu(setups.data() + setup_begin[r], q.num_poses, sampler, state.occupancy.data(),
                  q.pixels, q.num_pixels, b, e, q.view.width, q.out,
                  q.pose_gradient ? frames.data() + setup_begin[r] : nullptr, q.pose_gradient);
  });
}

void RenderConeDrr(const VolumeGrid& volume, const ConeView* views, const double* poses, int n,
                   float* out, const RenderOptions& options) {
  ValidateVolume(volume);
  ValidatePoses(poses, n);
  for (int i = 0; i < n; ++i) ValidateConeView(views[i], i);
  const RenderVolume view = RenderVolume::View(volume);
  RenderConeDrr(view, views, poses, n, out, options);
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
