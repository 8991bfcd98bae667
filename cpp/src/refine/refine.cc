// Intensity-based pose refinement (see fluororeg/refine.h). The renders are the renderer's
// (RenderConePixels, on the CPU or CUDA); this file only chooses which pixels to render, at
// which poses, and what to do with them.
// Size (about 950 lines): the pyramids, the region-of-interest features, the Levenberg-Marquardt
// loop with its Broyden updates and the batch drivers share one private context per frame and
// are only used here; splitting them would publish that context as an internal header. The
// render gather of the CUDA driver is render_gather.{h,cc}.
#include "fluororeg/refine.h"

#include <Eigen/Dense>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <memory>
#include <vector>

#include "fluororeg/parallel.h"
#include "common/cpu_clones.h"
#include "common/format.h"
#include "refine/refine_internal.h"
#include "refine/render_gather.h"
#include "render/render_internal.h"

#if defined(__GLIBC__)
#include <malloc.h>  // malloc_trim
#endif
#include <time.h>  // clock_gettime (POSIX)

namespace fluororeg {

namespace {

// Gives the memory the frames' threads freed back to the system. glibc keeps a heap (arena) per
// thread, up to 8 per core, and keeps what is freed in it mapped: with one thread per frame in
// flight (128 on CUDA), register's RSS grew by about 500 MB over a 2,000-frame recording on a
// 16-core machine (bench_long), and it levels off once every arena has reached its high-water
// mark. Called once per batch of frames (a few milliseconds at most).
void ReleaseFreedMemory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

// CPU seconds the calling thread has used (RefineResult::host_seconds).
double ThreadCpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

constexpr double kPi = 3.14159265358979323846;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int kMaxFramesInFlight = 4096;  // each holds a host thread
constexpr int kMaxRenderThreads = 256;     // RefineOptions::cuda_render_threads

using internal::Fmt;

// ------------------------------------------------------------------------------- rotations
using Mat3 = Eigen::Matrix3d;
using Vec3d = Eigen::Vector3d;

Mat3 RotationOf(const double* pose) {
  double R[9];
  RotationFromEulerZYX(pose, R);
  Mat3 m;
  m << R[0], R[1], R[2], R[3], R[4], R[5], R[6], R[7], R[8];
  return m;
}

// Inverse of RotationFromEulerZYX (R = Rx Ry Rz): R02 = sin(ty).
void EulerFromRotation(const Mat3& R, double* theta) {
  theta[1] = std::asin(std::clamp(R(0, 2), -1.0, 1.0));
  theta[0] = std::atan2(-R(1, 2), R(2, 2));
  theta[2] = std::atan2(-R(0, 1), R(0, 0));
}

Mat3 ExpSO3(const Vec3d& w) {
  const double a = w.norm();
  if (a < 1e-12) return Mat3::Identity();
  return Eigen::AngleAxisd(a, w / a).toRotationMatrix();
}

struct Pose {
  Mat3 R;
  Vec3d t;
  void ToArray(double* p) const {
    EulerFromRotation(R, p);
    p[3] = t[0];
    p[4] = t[1];
    p[5] = t[2];
  }
  static Pose FromArray(const double* p) { return {RotationOf(p), Vec3d(p[3], p[4], p[5])}; }
  // Rotation w (rad, world axes) about the model origin, then translation dt (mm).
  Pose Moved(const Vec3d& w, const Vec3d& dt) const { return {ExpSO3(w) * R, t + dt}; }
};

double RotationAngleDeg(const Mat3& a, const Mat3& b) {
  const double c = std::clamp(0.5 * ((a * b.transpose()).trace() - 1.0), -1.0, 1.0);
  return std::acos(c) * 180.0 / kPi;
}

// ------------------------------------------------------------------------------- pyramids
// One level of a volume: owned data (except level 0), grid, and the renderer's prepared view
// of it (block occupancy and support box, shared with RenderConeDrr).
struct LevelVolume {
  std::vector<float> storage;
  VolumeGrid grid;
  std::shared_ptr<RenderVolume> render;  // a View over grid.data (storage's buffer survives moves)
  double bbox_lo[3] = {0, 0, 0}, bbox_hi[3] = {0, 0, 0};  // non-zero voxels, voxel coords
  bool empty = true;

  void Finish() {
    render = std::make_shared<RenderVolume>(RenderVolume::View(grid));
    render->state().PrepareCone();
    int lo[3] = {grid.nx, grid.ny, grid.nz}, hi[3] = {-1, -1, -1};
    for (int k = 0; k < grid.nz; ++k)
      for (int j = 0; j < grid.ny; ++j) {
        const float* row = grid.data + (static_cast<long long>(k) * grid.ny + j) * grid.nx;
        for (int i = 0; i < grid.nx; ++i) {
          if (row[i] == 0.f) continue;
          lo[0] = std::min(lo[0], i), hi[0] = std::max(hi[0], i);
          lo[1] = std::min(lo[1], j), hi[1] = std::max(hi[1], j);
          lo[2] = std::min(lo[2], k), hi[2] = std::max(hi[2], k);
        }
      }
    empty = hi[0] < 0;
    for (int c = 0; c < 3; ++c) {
      bbox_lo[c] = lo[c] - 1.0;
      bbox_hi[c] = hi[c] + 1.0;
    }
  }
};

// Halve a volume along every axis that keeps >= 16 voxels: the mean (or max) of each block,
// a partial block at the far end completed with zeros; geometry follows the block centres.
LevelVolume Downsample(const LevelVolume& in, bool use_max) {
  const int n[3] = {in.grid.nx, in.grid.ny, in.grid.nz};
  int f[3], m[3];
  for (int c = 0; c < 3; ++c) {
    f[c] = n[c] >= 32 ? 2 : 1;
    m[c] = (n[c] + f[c] - 1) / f[c];
  }
  LevelVolume out;
  out.storage.assign(static_cast<size_t>(m[0]) * m[1] * m[2], 0.f);
  const float norm = 1.f / static_cast<float>(f[0] * f[1] * f[2]);
  for (int k = 0; k < m[2]; ++k)
    for (int j = 0; j < m[1]; ++j)
      for (int i = 0; i < m[0]; ++i) {
        float acc = 0.f;
        for (int dk = 0; dk < f[2]; ++dk)
          for (int dj = 0; dj < f[1]; ++dj)
            for (int di = 0; di < f[0]; ++di) {
              const int ii = f[0] * i + di, jj = f[1] * j + dj, kk = f[2] * k + dk;
              if (ii >= n[0] || jj >= n[1] || kk >= n[2]) continue;
              const float v =
                  in.grid.data[(static_cast<long long>(kk) * n[1] + jj) * n[0] + ii];
              acc = use_max ? std::max(acc, v) : acc + v;
            }
        out.storage[(static_cast<size_t>(k) * m[1] + j) * m[0] + i] = use_max ? acc : acc * norm;
      }
  out.grid.data = out.storage.data();
  out.grid.nx = m[0];
  out.grid.ny = m[1];
  out.grid.nz = m[2];
  // model_from_voxel' = model_from_voxel * [diag(f) | (f - 1) / 2].
  const double* a = in.grid.model_from_voxel.m;
  double* b = out.grid.model_from_voxel.m;
  for (int r = 0; r < 3; ++r) {
    double shift = a[4 * r + 3];
    for (int c = 0; c < 3; ++c) {
      b[4 * r + c] = a[4 * r + c] * f[c];
      shift += a[4 * r + c] * 0.5 * (f[c] - 1);
    }
    b[4 * r + 3] = shift;
  }
  out.Finish();
  return out;
}

// copy_finest: level 0 owns a copy of the voxels (else it is a view of the caller's).
std::vector<LevelVolume> MakeVolumePyramid(const VolumeGrid& finest, int levels, bool use_max,
                                           bool copy_finest) {
  std::vector<LevelVolume> p(levels);
  p[0].grid = finest;
  if (copy_finest) {
    p[0].storage.assign(finest.data, finest.data + static_cast<size_t>(finest.nx) * finest.ny *
                                                       finest.nz);
    p[0].grid.data = p[0].storage.data();
  }
  p[0].Finish();
  for (int l = 1; l < levels; ++l) p[l] = Downsample(p[l - 1], use_max);
  return p;
}

}  // namespace

struct RefineVolumes::Levels {
  std::vector<LevelVolume> volumes;  // index = level - finest_level
  std::vector<LevelVolume> bones;    // empty: the volumes serve
};

namespace {

// The pyramids of num_levels levels (both validated first); copy_finest as MakeVolumePyramid.
std::shared_ptr<RefineVolumes::Levels> MakeLevels(const VolumeGrid& volume, const VolumeGrid& bone,
                                                  int num_levels, bool copy_finest) {
  ValidateVolume(volume);
  if (bone.data != nullptr) ValidateVolume(bone);
  auto levels = std::make_shared<RefineVolumes::Levels>();
  levels->volumes = MakeVolumePyramid(volume, num_levels, false, copy_finest);
  if (bone.data != nullptr) levels->bones = MakeVolumePyramid(bone, num_levels, true, copy_finest);
  return levels;
}

// ------------------------------------------------------------------------------- per frame
struct ViewLevel {
  bool used = false;
  double weight = 0;
  ConeView view{};
  int W = 0, H = 0;
  std::vector<int32_t> render_px;    // pixel indices y * W + x to render
  std::vector<int32_t> roi;          // [n_roi] indices into render_px
  std::vector<int32_t> nbr;          // [n_roi, 4] left, right, up, down into render_px (GC)
  std::vector<double> target;        // [channels * n_roi] normalised target features
  int channels = 1;
  int NumResiduals() const { return used ? channels * static_cast<int>(roi.size()) : 0; }
};

using internal::RenderGather;

// How one frame's renders run: on `threads` CPU threads of its own (or the CUDA device), or
// gathered with those of the other frames in flight (gather set).
// `result`, when given, counts the calls and rays (RefineResult::render_calls, rendered_rays).
struct Renders {
  int threads = 1;
  RenderGather* gather = nullptr;
  RefineResult* result = nullptr;
};

struct Context {
  const RefineInput* input;
  const RefineOptions* options;
  const RefineVolumes::Levels* pyramids = nullptr;     // at least num_levels levels
  std::shared_ptr<const RefineVolumes::Levels> owned;  // pyramids made for this call, or null
  int num_levels = 0;                                  // the levels this call uses
  // Per view and level k = level - finest_level, [H_l, W_l]: 1 where a region of interest may
  // lie (RegionOfInterest): within the usable pixels eroded by 2, so that gradients do not see
  // the edge of the field of view (the image masks' pyramid; all pixels without masks), and off
  // the image border.
  std::vector<std::vector<uint8_t>> allowed[2];
  int W = 0, H = 0;
  double lever_mm = 50;  // radius of the bone, to scale rotations to millimetres
  // Level k = level - finest_level of the attenuation and of the region-of-interest volume.
  const LevelVolume& Volume(int k) const { return pyramids->volumes[k]; }
  const LevelVolume& Bone(int k) const {
    return pyramids->bones.empty() ? pyramids->volumes[k] : pyramids->bones[k];
  }
};

// Mean of the f x f blocks of a full-resolution image (or min of a mask).
template <typename T>
std::vector<T> DownsampleImage(const T* img, int W, int H, int level, bool use_min) {
  const int f = 1 << level, w = W >> level, h = H >> level;
  std::vector<T> out(static_cast<size_t>(w) * h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      double acc = use_min ? 1e300 : 0.0;
      for (int dy = 0; dy < f; ++dy)
        for (int dx = 0; dx < f; ++dx) {
          const double v = img[static_cast<long long>(f * y + dy) * W + f * x + dx];
          acc = use_min ? std::min(acc, v) : acc + v;
        }
      out[static_cast<size_t>(y) * w + x] = static_cast<T>(use_min ? acc : acc / (f * f));
    }
  return out;
}

// The pyramid of a full-resolution image over `levels` levels from `finest` on (index: level -
// finest): the finest from the full image, each coarser one by halving the one before (the same
// block means, or minima, as from the full image; only the order of the sums differs).
template <typename T>
std::vector<std::vector<T>> ImagePyramid(const T* img, int W, int H, int finest, int levels,
                                         bool use_min) {
  std::vector<std::vector<T>> p;
  p.push_back(DownsampleImage(img, W, H, finest, use_min));
  for (int k = 1; k < levels; ++k) {
    p.push_back(DownsampleImage(p.back().data(), W >> (finest + k - 1), H >> (finest + k - 1), 1,
                                use_min));
  }
  return p;
}

// One frame's images at the pyramid levels (per view, index: level - finest_level).
struct FrameImages {
  std::vector<std::vector<float>> level[2];
};

RenderOptions PixelRenderOptions(const RefineOptions& o, int threads) {
  RenderOptions ro;
  ro.device = o.device;
  ro.num_threads = threads;
  ro.step_voxels = o.step_voxels;
  ro.cuda_texture = false;  // the exact trilinear sampler: CPU and CUDA agree to rounding
  return ro;
}

// Render n requests (each: listed pixels of one view for K poses, into its out [K, n_px]) in
// one call, or on CUDA in one gathered round: a frame's views need not wait for each other.
void RenderRequests(const Context& ctx, const LevelVolume& vol, const ConePixelRequest* requests,
                    int n, const Renders& renders) {
  if (renders.result) {
    renders.result->render_calls += 1;
    for (int i = 0; i < n; ++i)
      renders.result->rendered_rays +=
          static_cast<long long>(requests[i].num_pixels) * requests[i].num_poses;
  }
  const double cpu0 = ThreadCpuSeconds();
  if (renders.gather) {
    renders.gather->Render(*vol.render, requests, n);
  } else {
    RenderConePixelsBatch(*vol.render, requests, n,
                          PixelRenderOptions(*ctx.options, renders.threads));
  }
  // The render's share of this thread's time is not the frame's host work.
  if (renders.result) renders.result->host_seconds -= ThreadCpuSeconds() - cpu0;
}

// The request that renders the listed pixels px of `view` for K poses [K, 6] into out [K, n_px]
// (resized).
ConePixelRequest PixelRequest(const ConeView& view, const std::vector<int32_t>& px,
                              const std::vector<double>& poses, std::vector<float>* out) {
  ConePixelRequest q;
  q.view = view;
  q.pixels = px.data();
  q.num_pixels = static_cast<int>(px.size());
  q.poses = poses.data();
  q.num_poses = static_cast<int>(poses.size() / 6);
  out->resize(static_cast<size_t>(q.num_poses) * px.size());
  q.out = out->data();
  return q;
}

// The region's features before normalisation, raw [channels * n_roi] (GC: x then y gradient by
// central differences; NCC: values) from values [n_render_px] (or their derivatives).
void RawFeatures(const ViewLevel& vl, const float* values, double* raw) {
  const int n = static_cast<int>(vl.roi.size());
  if (vl.channels == 2) {
    for (int i = 0; i < n; ++i) {
      const int32_t* nb = vl.nbr.data() + 4 * i;
      raw[i] = 0.5 * (static_cast<double>(values[nb[1]]) - values[nb[0]]);
      raw[n + i] = 0.5 * (static_cast<double>(values[nb[3]]) - values[nb[2]]);
    }
  } else {
    for (int i = 0; i < n; ++i) raw[i] = values[vl.roi[i]];
  }
}

// Features at the region's pixels (RawFeatures), each channel normalised to zero mean and unit
// norm (all zeros when constant); inv_norm [channels], when given: each channel's 1 / norm
// before normalising (0 when constant).
void Features(const ViewLevel& vl, const float* values, double* feat, double* inv_norm = nullptr) {
  const int n = static_cast<int>(vl.roi.size());
  RawFeatures(vl, values, feat);
  for (int c = 0; c < vl.channels; ++c) {
    double* f = feat + static_cast<long long>(c) * n;
    double mean = 0;
    for (int i = 0; i < n; ++i) mean += f[i];
    mean /= std::max(n, 1);
    double ss = 0;
    for (int i = 0; i < n; ++i) {
      f[i] -= mean;
      ss += f[i] * f[i];
    }
    const double s = ss > 1e-30 ? 1.0 / std::sqrt(ss) : 0.0;
    for (int i = 0; i < n; ++i) f[i] *= s;
    if (inv_norm) inv_norm[c] = s;
  }
}

// The sums over a view's region that the normal equations need of one channel's raw feature
// derivatives d_j (RawFeatures of the values' derivative along pose parameter j, j = 0..5),
// with f the channel's normalised features and t its target: S_j = sum d_j, P_j = f . d_j,
// T_j = t . d_j and G_jk = d_j . d_k.
struct DerivativeMoments {
  double S[6] = {}, P[6] = {}, T[6] = {};
  double G[6][6] = {};  // upper triangle (j <= k) filled
};

// The moments' pixels go through in blocks: a block's derivatives are gathered, then each sum
// takes the block as kMomentLanes partial sums (independent lanes that vectorise; the order of
// the additions differs from one sum over the pixels by rounding only).
constexpr int kMomentBlock = 64;
constexpr int kMomentLanes = 4;

// Adds sum_q a[q] b[q] over a block to the lanes' partial sums acc [kMomentLanes].
inline void AddBlockDot(const double* a, const double* b, double* acc) {
  for (int q = 0; q < kMomentBlock; q += kMomentLanes)
    for (int l = 0; l < kMomentLanes; ++l) acc[l] += a[q + l] * b[q + l];
}

// DerivativeMoments of channel c from the values' derivatives grads [6, n_render_px], the
// channel's normalised features f [n_roi] and target t [n_roi]; one pass, no derivative kept.
FLUORO_CPU_CLONES DerivativeMoments ChannelMoments(const ViewLevel& vl, int c, const float* grads,
                                                   const double* f, const double* t) {
  const int n = static_cast<int>(vl.roi.size());
  const size_t n_px = vl.render_px.size();
  static constexpr double kOnes[kMomentBlock] = {
      1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
      1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  // Partial sums [sum][lane]: S, P, T (6 each), then G's upper triangle (21).
  double acc[39][kMomentLanes] = {};
  alignas(32) double d[6][kMomentBlock], fb[kMomentBlock], tb[kMomentBlock];
  for (int i0 = 0; i0 < n; i0 += kMomentBlock) {
    const int b = std::min(kMomentBlock, n - i0);
    for (int q = 0; q < kMomentBlock; ++q) {  // past the region's end: zeros, which add nothing
      const int i = i0 + q;
      if (q >= b) {
        for (int j = 0; j < 6; ++j) d[j][q] = 0;
        fb[q] = tb[q] = 0;
        continue;
      }
      if (vl.channels == 2) {  // central differences along x (c = 0) or y (c = 1)
        const int32_t lo = vl.nbr[4 * i + 2 * c], hi = vl.nbr[4 * i + 2 * c + 1];
        for (int j = 0; j < 6; ++j)
          d[j][q] = 0.5 * (static_cast<double>(grads[j * n_px + hi]) - grads[j * n_px + lo]);
      } else {
        for (int j = 0; j < 6; ++j) d[j][q] = grads[j * n_px + vl.roi[i]];
      }
      fb[q] = f[i];
      tb[q] = t[i];
    }
    int pair = 18;
    for (int j = 0; j < 6; ++j) {
      AddBlockDot(d[j], kOnes, acc[j]);
      AddBlockDot(d[j], fb, acc[6 + j]);
      AddBlockDot(d[j], tb, acc[12 + j]);
      for (int k = j; k < 6; ++k) AddBlockDot(d[j], d[k], acc[pair++]);
    }
  }
  auto total = [&](int sum) {
    double s = 0;
    for (int l = 0; l < kMomentLanes; ++l) s += acc[sum][l];
    return s;
  };
  DerivativeMoments m;
  int pair = 18;
  for (int j = 0; j < 6; ++j) {
    m.S[j] = total(j);
    m.P[j] = total(6 + j);
    m.T[j] = total(12 + j);
    for (int k = j; k < 6; ++k) m.G[j][k] = total(pair++);
  }
  return m;
}

// The Gauss-Newton normal equations at one pose: A = J^T J [6, 6], g = J^T r [6] and the cost
// r^T r, with r the residuals and J their Jacobian along the scaled parameters (rotation
// w * lever_mm, translation mm).
struct NormalEquations {
  Eigen::Matrix<double, 6, 6> A = Eigen::Matrix<double, 6, 6>::Zero();
  Eigen::Matrix<double, 6, 1> g = Eigen::Matrix<double, 6, 1>::Zero();
  double cost = 0;
};

// Adds one view's share to ne, from its normalised features feat [channels * n_roi], each
// channel's 1 / norm inv_norm (Features) and the values' derivatives grads [6, n_render_px];
// `lever_mm` scales the rotation parameters. Each channel's residuals are
// r = scale (f - t) with f = s (raw - mean(raw)) (s: inv_norm), so the feature derivative is
// df_j = s (u_j - f P_j), u_j = d_j - m_j, m_j = S_j / n (the mean of d_j); with the region's
// sums F = sum f, FF = f . f, FT = f . t, TT = t . t and Ts = sum t:
//   df_j . df_k  = s^2 (G_jk - n m_j m_k - P_j P_k (2 - FF) + F (m_j P_k + m_k P_j))
//   df_j . (f - t) = s (P_j - m_j F - (T_j - m_j Ts) - P_j (FF - FT))
//   r . r = scale^2 (FF - 2 FT + TT).
// (J's column j is scale df_j, over the rotation's by lever_mm.) The same sums as forming J,
// in another order; a view's J, [channels * n_roi, 6] doubles, is never made.
void AddViewNormalEquations(const ViewLevel& vl, const double* feat, const double* inv_norm,
                            const float* grads, double lever_mm, NormalEquations* ne) {
  const int n = static_cast<int>(vl.roi.size());
  const double scale2 = vl.weight / vl.channels;  // scale^2
  for (int c = 0; c < vl.channels; ++c) {
    const double* f = feat + static_cast<size_t>(c) * n;
    const double* t = vl.target.data() + static_cast<size_t>(c) * n;
    double F = 0, FF = 0, FT = 0, TT = 0, Ts = 0;
    for (int i = 0; i < n; ++i) {
      F += f[i];
      FF += f[i] * f[i];
      FT += f[i] * t[i];
      TT += t[i] * t[i];
      Ts += t[i];
    }
    ne->cost += scale2 * (FF - 2 * FT + TT);
    const double s = inv_norm[c];
    if (s == 0) continue;  // a constant channel: its features do not move
    const DerivativeMoments mo = ChannelMoments(vl, c, grads, f, t);
    double m[6], k[6];
    for (int j = 0; j < 6; ++j) {
      m[j] = mo.S[j] / n;
      k[j] = j < 3 ? 1.0 / lever_mm : 1.0;  // d/d(w L) = (1 / L) d/dw
    }
    for (int j = 0; j < 6; ++j) {
      ne->g[j] += k[j] * scale2 * s *
                  (mo.P[j] - m[j] * F - (mo.T[j] - m[j] * Ts) - mo.P[j] * (FF - FT));
      for (int l = j; l < 6; ++l) {
        const double a = s * s * (mo.G[j][l] - n * m[j] * m[l] - mo.P[j] * mo.P[l] * (2 - FF) +
                                  F * (m[j] * mo.P[l] + m[l] * mo.P[j]));
        ne->A(j, l) += k[j] * k[l] * scale2 * a;
        if (l != j) ne->A(l, j) = ne->A(j, l);
      }
    }
  }
}

double SimilarityOf(const ViewLevel& vl, const double* feat) {
  const int n = static_cast<int>(vl.roi.size());
  double s = 0;
  for (int c = 0; c < vl.channels; ++c) {
    double d = 0;
    for (int i = 0; i < n; ++i) d += feat[c * n + i] * vl.target[c * n + i];
    s += d;
  }
  return s / vl.channels;
}

// Pixel at the object (mm) of a level view for a model origin at t.
double PixelAtObject(const ConeView& v, const Vec3d& t) {
  const Vec3d S(v.source[0], v.source[1], v.source[2]);
  const Vec3d D(v.intensifier_centre[0], v.intensifier_centre[1], v.intensifier_centre[2]);
  const Vec3d n = Vec3d(v.u[0], v.u[1], v.u[2]).cross(Vec3d(v.v[0], v.v[1], v.v[2]));
  const double sdd = std::fabs(n.dot(D - S)), sod = std::max(std::fabs(n.dot(t - S)), 1.0);
  return std::min(v.pitch_u, v.pitch_v) * sod / sdd;
}

// Square dilation by radius r of a [H, W] 0/1 map.
std::vector<uint8_t> Dilate(const std::vector<uint8_t>& m, int W, int H, int r) {
  if (r <= 0) return m;
  std::vector<uint8_t> tmp(m.size(), 0), out(m.size(), 0);
  for (int y = 0; y < H; ++y) {
    int last = -1000000;  // last set column seen
    for (int x = 0; x < W + r; ++x) {
      if (x < W && m[static_cast<size_t>(y) * W + x]) last = x;
      // forward pass marks [last, last + r]; backward below marks [.. - r]
      if (x < W && x - last <= r) tmp[static_cast<size_t>(y) * W + x] = 1;
    }
    int next = 1000000;
    for (int x = W - 1; x >= 0; --x) {
      if (m[static_cast<size_t>(y) * W + x]) next = x;
      if (next - x <= r) tmp[static_cast<size_t>(y) * W + x] = 1;
    }
  }
  for (int x = 0; x < W; ++x) {
    int last = -1000000;
    for (int y = 0; y < H; ++y) {
      if (tmp[static_cast<size_t>(y) * W + x]) last = y;
      if (y - last <= r) out[static_cast<size_t>(y) * W + x] = 1;
    }
    int next = 1000000;
    for (int y = H - 1; y >= 0; --y) {
      if (tmp[static_cast<size_t>(y) * W + x]) next = y;
      if (next - y <= r) out[static_cast<size_t>(y) * W + x] = 1;
    }
  }
  return out;
}

// The pixels of one view whose rays may meet the bone at a pose: the pixel box of the bone's
// voxel box (y * W + x), empty when the box misses the view or lies behind a source.
std::vector<int32_t> BoneBoxPixels(const LevelVolume& bone, const ConeView& view,
                                   const double* pose) {
  const int W = view.width, H = view.height;
  if (bone.empty) return {};
  const Affine3<double> world_from_model = AffineFromPose(pose);
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (int c = 0; c < 8; ++c) {
    const Vec3<double> ijk{(c & 1) ? bone.bbox_hi[0] : bone.bbox_lo[0],
                           (c & 2) ? bone.bbox_hi[1] : bone.bbox_lo[1],
                           (c & 4) ? bone.bbox_hi[2] : bone.bbox_lo[2]};
    const Vec3<double> X = world_from_model.Apply(bone.grid.model_from_voxel.Apply(ijk));
    double px, py;
    if (!ProjectCone(view, X, &px, &py)) return {};  // behind a source: nothing sensible
    x0 = std::min(x0, px), x1 = std::max(x1, px), y0 = std::min(y0, py), y1 = std::max(y1, py);
  }
  const int bx0 = std::max(0, static_cast<int>(std::floor(x0)) - 1);
  const int bx1 = std::min(W - 1, static_cast<int>(std::ceil(x1)) + 1);
  const int by0 = std::max(0, static_cast<int>(std::floor(y0)) - 1);
  const int by1 = std::min(H - 1, static_cast<int>(std::ceil(y1)) + 1);
  std::vector<int32_t> px;
  if (bx0 > bx1 || by0 > by1) return px;
  px.reserve(static_cast<size_t>(bx1 - bx0 + 1) * (by1 - by0 + 1));
  for (int y = by0; y <= by1; ++y)
    for (int x = bx0; x <= bx1; ++x) px.push_back(y * W + x);
  return px;
}

// The bone's path length (mm, of the region-of-interest volume) above which a ray meets the bone.
constexpr float kBonePathMm = 1e-6f;

// The pixels of a level image where a region of interest may lie (Context::allowed): those of
// `usable` [H, W] (empty: every pixel) eroded by 2, off the image border. Returns [H, W] 0/1.
std::vector<uint8_t> AllowedPixels(const std::vector<uint8_t>& usable, int W, int H) {
  std::vector<uint8_t> unusable(static_cast<size_t>(W) * H, 0);  // the complement, dilated
  for (size_t i = 0; i < usable.size(); ++i) unusable[i] = !usable[i];
  unusable = Dilate(unusable, W, H, 2);
  std::vector<uint8_t> allowed(unusable.size(), 0);
  for (int y = 1; y < H - 1; ++y)
    for (int x = 1; x < W - 1; ++x) {
      const size_t i = static_cast<size_t>(y) * W + x;
      allowed[i] = !unusable[i];
    }
  return allowed;
}

// The region of interest of one view at one level, from the bone's path lengths at the box
// pixels px (a rectangle, row by row: BoneBoxPixels): the projected bone, dilated by the
// margin, within the allowed pixels [H_l, W_l] (Context::allowed). The dilation is made over the
// rectangle grown by the margin, which holds all of it. Returns [H_l, W_l] 0/1.
std::vector<uint8_t> RegionOfInterest(const Context& ctx, const ConeView& view,
                                      const std::vector<uint8_t>& allowed,
                                      const std::vector<int32_t>& px,
                                      const std::vector<float>& path) {
  const int W = view.width, H = view.height;
  std::vector<uint8_t> roi(static_cast<size_t>(W) * H, 0);
  if (px.empty()) return roi;
  const int r = static_cast<int>(std::ceil(ctx.options->roi_margin_px));
  const int x0 = std::max(0, px.front() % W - r), x1 = std::min(W - 1, px.back() % W + r);
  const int y0 = std::max(0, px.front() / W - r), y1 = std::min(H - 1, px.back() / W + r);
  const int w = x1 - x0 + 1, h = y1 - y0 + 1;
  std::vector<uint8_t> proj(static_cast<size_t>(w) * h, 0);  // over the grown rectangle
  for (size_t i = 0; i < px.size(); ++i)
    proj[static_cast<size_t>(px[i] / W - y0) * w + (px[i] % W - x0)] = path[i] > kBonePathMm;
  proj = Dilate(proj, w, h, r);
  for (int y = y0; y <= y1; ++y)
    for (int x = x0; x <= x1; ++x) {
      const size_t i = static_cast<size_t>(y) * W + x;
      roi[i] = proj[static_cast<size_t>(y - y0) * w + (x - x0)] && allowed[i];
    }
  return roi;
}

// Fill the ViewLevel's pixel lists and normalised target from a region of interest and the
// level image [H_l, W_l].
void SetRegion(ViewLevel* vl, const std::vector<uint8_t>& roi, const float* image, int min_pixels) {
  const int W = vl->W, H = vl->H;
  vl->render_px.clear();
  vl->roi.clear();
  vl->nbr.clear();
  std::vector<int32_t> index(static_cast<size_t>(W) * H, -1);
  auto add = [&](int i) {
    if (index[i] < 0) {
      index[i] = static_cast<int32_t>(vl->render_px.size());
      vl->render_px.push_back(i);
    }
    return index[i];
  };
  for (int i = 0; i < W * H; ++i) {
    if (!roi[i]) continue;
    vl->roi.push_back(add(i));
    if (vl->channels == 2) {
      vl->nbr.push_back(add(i - 1));
      vl->nbr.push_back(add(i + 1));
      vl->nbr.push_back(add(i - W));
      vl->nbr.push_back(add(i + W));
    }
  }
  vl->used = vl->weight > 0 && static_cast<int>(vl->roi.size()) >= min_pixels;
  // Target features from the level image.
  std::vector<float> values(vl->render_px.size());
  for (size_t i = 0; i < values.size(); ++i) values[i] = image[vl->render_px[i]];
  vl->target.assign(static_cast<size_t>(vl->channels) * vl->roi.size(), 0.0);
  if (!vl->roi.empty()) Features(*vl, values.data(), vl->target.data());
}

// Both views of one frame at one level.
struct FrameLevel {
  ViewLevel views[2];
  int k = 0;  // level - finest_level
};

FrameImages MakeFrameImages(const Context& ctx, int frame) {
  const long long image_size = static_cast<long long>(ctx.W) * ctx.H;
  FrameImages images;
  for (int v = 0; v < 2; ++v) {
    images.level[v] = ImagePyramid(ctx.input->images + (2LL * frame + v) * image_size, ctx.W,
                                   ctx.H, ctx.options->finest_level,
                                   ctx.num_levels, false);
  }
  return images;
}

void PrepareLevel(const Context& ctx, int frame, const FrameImages& images, int level,
                  const double* pose, const Renders& renders, FrameLevel* fl) {
  const RefineOptions& o = *ctx.options;
  const RefineInput& in = *ctx.input;
  fl->k = level - o.finest_level;
  for (int v = 0; v < 2; ++v) {
    ViewLevel& vl = fl->views[v];
    vl.weight = (v == 0 ? o.weight_view1 : o.weight_view2) *
                (in.view_weights ? in.view_weights[2LL * frame + v] : 1.0);
    vl.view = PyramidView(in.views[v], level);
    vl.W = vl.view.width;
    vl.H = vl.view.height;
    vl.channels = o.similarity == RefineSimilarity::kGradientCorrelation ? 2 : 1;
  }
  // The bone's path lengths in both views' boxes, in one render call.
  const LevelVolume& bone = ctx.Bone(fl->k);
  const std::vector<double> poses(pose, pose + 6);
  std::vector<int32_t> box[2];
  std::vector<float> path[2];
  ConePixelRequest requests[2];
  int n_requests = 0;
  for (int v = 0; v < 2; ++v) {
    box[v] = BoneBoxPixels(bone, fl->views[v].view, pose);
    if (box[v].empty()) continue;
    requests[n_requests] = PixelRequest(fl->views[v].view, box[v], poses, &path[v]);
    requests[n_requests++].stop_above = kBonePathMm;  // the region needs path > it, no more
  }
  if (n_requests > 0) RenderRequests(ctx, bone, requests, n_requests, renders);
  for (int v = 0; v < 2; ++v) {
    SetRegion(&fl->views[v],
              RegionOfInterest(ctx, fl->views[v].view, ctx.allowed[v][fl->k], box[v], path[v]),
              images.level[v][fl->k].data(), o.min_roi_pixels);
  }
}

// Residuals sum_v sqrt(w_v / channels) (f_v(pose) - t_v) for K poses; returns [K, n_res].
void Residuals(const Context& ctx, const FrameLevel& fl, const std::vector<double>& poses,
               const Renders& renders, std::vector<double>* res, int n_res,
               std::vector<double>* similarity = nullptr) {
  const int K = static_cast<int>(poses.size() / 6);
  res->assign(static_cast<size_t>(K) * n_res, 0.0);
  if (similarity) similarity->assign(2LL * K, kNaN);
  // Both views' renders in one call (one round on CUDA).
  auto rendered = [&](const ViewLevel& vl) {
    return (vl.used || similarity) && !vl.roi.empty() &&
           static_cast<int>(vl.roi.size()) >= ctx.options->min_roi_pixels;
  };
  std::vector<float> values[2];
  ConePixelRequest requests[2];
  int n_requests = 0;
  for (int v = 0; v < 2; ++v) {
    const ViewLevel& vl = fl.views[v];
    if (rendered(vl)) {
      requests[n_requests++] = PixelRequest(vl.view, vl.render_px, poses, &values[v]);
    }
  }
  RenderRequests(ctx, ctx.Volume(fl.k), requests, n_requests, renders);
  int offset = 0;
  for (int v = 0; v < 2; ++v) {
    const ViewLevel& vl = fl.views[v];
    if (!rendered(vl)) continue;
    const int n = vl.NumResiduals() > 0 ? vl.NumResiduals()
                                        : vl.channels * static_cast<int>(vl.roi.size());
    std::vector<double> feat(n);
    const double scale = std::sqrt(vl.weight / vl.channels);
    for (int k = 0; k < K; ++k) {
      Features(vl, values[v].data() + static_cast<size_t>(k) * vl.render_px.size(), feat.data());
      if (similarity) (*similarity)[2 * k + v] = SimilarityOf(vl, feat.data());
      if (!vl.used) continue;
      double* r = res->data() + static_cast<size_t>(k) * n_res + offset;
      for (int i = 0; i < n; ++i) r[i] = scale * (feat[i] - vl.target[i]);
    }
    if (vl.used) offset += n;
  }
}

// The normal equations at one pose (NormalEquations) from one render with the renderer's pose
// gradients (RefineOptions::analytic_jacobian).
NormalEquations NormalEquationsAt(const Context& ctx, const FrameLevel& fl,
                                  const std::vector<double>& pose, const Renders& renders) {
  std::vector<float> values[2], grads[2];
  ConePixelRequest requests[2];
  int n_requests = 0;
  for (int v = 0; v < 2; ++v) {
    const ViewLevel& vl = fl.views[v];
    if (!vl.used) continue;
    ConePixelRequest q = PixelRequest(vl.view, vl.render_px, pose, &values[v]);
    grads[v].resize(6 * vl.render_px.size());
    q.pose_gradient = grads[v].data();
    requests[n_requests++] = q;
  }
  RenderRequests(ctx, ctx.Volume(fl.k), requests, n_requests, renders);
  NormalEquations ne;
  for (int v = 0; v < 2; ++v) {
    const ViewLevel& vl = fl.views[v];
    if (!vl.used) continue;
    std::vector<double> feat(vl.NumResiduals());
    double inv_norm[2];
    Features(vl, values[v].data(), feat.data(), inv_norm);
    AddViewNormalEquations(vl, feat.data(), inv_norm, grads[v].data(), ctx.lever_mm, &ne);
  }
  return ne;
}

double SquaredNorm(const double* r, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += r[i] * r[i];
  return s;
}

// Levenberg-Marquardt at one level; returns the iterations taken.
constexpr int kMaxTries = 8;  // rendered tries of a step per iteration
int RefineLevel(const Context& ctx, const FrameLevel& fl, Pose* pose, const Renders& renders) {
  const double coarse = static_cast<double>(1 << (fl.k));  // tolerance scale of this level
  const RefineOptions& o = *ctx.options;
  const int n_res = fl.views[0].NumResiduals() + fl.views[1].NumResiduals();
  if (n_res == 0) return 0;
  double h = 1e300;  // finite-difference step, mm (rotations: mm at the lever)
  for (const auto& vl : fl.views)
    if (vl.used) h = std::min(h, o.fd_step_px * PixelAtObject(vl.view, pose->t));
  const double L = ctx.lever_mm;
  const double tol_rad = coarse * o.tolerance_deg * kPi / 180.0;
  // Finite differences: the residuals at the current pose [n_res], of the probes, and their
  // Jacobian J [n_res, 6] (Broyden-updated or fresh). The analytic Jacobian needs none of them:
  // its normal equations come from the render (NormalEquationsAt).
  std::vector<double> res, jres;
  Eigen::MatrixXd J;
  if (!o.analytic_jacobian) J.resize(n_res, 6);
  Eigen::Matrix<double, 6, 6> A;  // the normal equations at the current pose: J^T J, J^T r
  Eigen::Matrix<double, 6, 1> g;
  double cost = 0;
  bool started = false;  // cost is the current pose's (the level's start was rendered)
  double lambda = 1e-3;
  int it = 0;
  bool fresh = false;         // J was made at the current pose (not a Broyden update)
  bool need_jacobian = true;  // make J at the start of the next iteration
  for (; it < o.max_iterations; ++it) {
    if (need_jacobian && o.analytic_jacobian) {
      std::vector<double> at(6);
      pose->ToArray(at.data());
      const NormalEquations ne = NormalEquationsAt(ctx, fl, at, renders);
      A = ne.A;
      g = ne.g;
      if (!started) cost = ne.cost;  // the level's start: its cost comes with the Jacobian
      started = true;
      fresh = true;
      need_jacobian = false;
    } else if (need_jacobian) {
      // Differences along the 6 scaled parameters (rotation w * L, translation): central
      // (+h, -h per parameter) or forward (+h, against the current residuals). The first
      // iteration renders the start pose in the same call (one render call fewer per level).
      const int sides = o.central_differences ? 2 : 1;
      const int first = started ? 0 : 1;  // probes after the start pose
      std::vector<double> probes(6 * (first + sides * 6));
      if (first) pose->ToArray(probes.data());
      for (int j = 0; j < 6; ++j)
        for (int s = 0; s < sides; ++s) {
          Vec3d w = Vec3d::Zero(), dt = Vec3d::Zero();
          const double step = s == 0 ? h : -h;
          if (j < 3) w[j] = step / L; else dt[j - 3] = step;
          pose->Moved(w, dt).ToArray(probes.data() + 6 * (first + sides * j + s));
        }
      Residuals(ctx, fl, probes, renders, &jres, n_res);
      if (first) {
        res.assign(jres.begin(), jres.begin() + n_res);
        cost = SquaredNorm(res.data(), n_res);
        started = true;
      }
      for (int j = 0; j < 6; ++j) {
        const double* rp = jres.data() + static_cast<size_t>(first + sides * j) * n_res;
        const double* rm = sides == 2 ? rp + n_res : res.data();
        for (int i = 0; i < n_res; ++i) J(i, j) = (rp[i] - rm[i]) / (sides * h);
      }
      fresh = true;
      need_jacobian = false;
    }
    if (!o.analytic_jacobian) {
      A = J.transpose() * J;
      g = J.transpose() * Eigen::Map<const Eigen::VectorXd>(res.data(), n_res);
    }
    // Tries of the damped step. After a failed try (fresh J), lambda grows until the step
    // differs from the failed one by kMinStepChange of its length: from a small lambda, x5
    // barely changes the step, and such a try costs a render and fails again. A step that is
    // then within the level's tolerance ends the level (later tries would be shorter still).
    // Measured on the 96 independent-renderer frames from landmark poses: 24 % fewer render
    // calls, 6 % fewer rays, poses within 0.008 deg / 0.007 mm of always rendering
    // eight tries, the same frames flagged.
    constexpr double kMinStepChange = 0.1;
    constexpr double kMaxLambda = 1e20;
    bool accepted = false, small = false;
    Eigen::Matrix<double, 6, 1> failed_step = Eigen::Matrix<double, 6, 1>::Zero();
    bool failed = false;
    for (int tries = 0; tries < kMaxTries && !accepted;) {
      Eigen::Matrix<double, 6, 6> M = A;
      for (int j = 0; j < 6; ++j) M(j, j) += lambda * std::max(A(j, j), 1e-12);
      const Eigen::Matrix<double, 6, 1> d = -M.ldlt().solve(g);
      if (!d.allFinite()) {
        lambda *= 10;
        ++tries;
        continue;
      }
      if (failed && (d - failed_step).norm() < kMinStepChange * failed_step.norm() &&
          lambda < kMaxLambda) {
        lambda *= 5;  // no render: about the step that failed
        continue;
      }
      const Vec3d w = d.head<3>() / L, dt = d.tail<3>();
      if (failed && w.norm() < tol_rad && dt.norm() < coarse * o.tolerance_mm) break;
      ++tries;
      const Pose cand = pose->Moved(w, dt);
      std::vector<double> ca(6), cres;  // cres: the try's residuals (not with its Jacobian)
      cand.ToArray(ca.data());
      // With the analytic Jacobian, a try that would be followed by another iteration if taken
      // is rendered with its pose gradients: taken, it needs no Jacobian render of its own (one
      // render call per iteration instead of two); refused, the gradients are lost.
      const bool last = w.norm() < tol_rad && dt.norm() < coarse * o.tolerance_mm;
      // (Broyden updates are not used with it: ValidateRefineOptions.)
      const bool with_jacobian = o.analytic_jacobian && !last && it + 1 < o.max_iterations;
      NormalEquations tried;  // with_jacobian: the try's own
      double c;
      if (with_jacobian) {
        tried = NormalEquationsAt(ctx, fl, ca, renders);
        c = tried.cost;
      } else {
        Residuals(ctx, fl, ca, renders, &cres, n_res);
        c = SquaredNorm(cres.data(), n_res);
      }
      if (c < cost) {
        if (o.broyden_updates) {  // rank-1 secant update: J d = r_new - r_old afterwards
          const Eigen::Map<const Eigen::VectorXd> rn(cres.data(), n_res), ro(res.data(), n_res);
          const Eigen::VectorXd y = rn - ro - J * d;
          J += y * d.transpose() / std::max(d.squaredNorm(), 1e-300);
        } else if (with_jacobian) {
          A = tried.A;
          g = tried.g;
        } else {
          need_jacobian = true;
        }
        small = w.norm() < tol_rad && dt.norm() < coarse * o.tolerance_mm;
        // A small step from an updated Jacobian is checked with a fresh one first.
        if (small && !fresh) {
          small = false;
          need_jacobian = true;
        }
        fresh = with_jacobian;  // J is the candidate's own
        *pose = cand;
        res.swap(cres);  // finite differences' (the analytic Jacobian keeps no residuals)
        cost = c;
        lambda = std::max(lambda / 3, 1e-7);
        accepted = true;
      } else if (!fresh) {
        break;  // a stale (Broyden) Jacobian: make a fresh one before giving up
      } else {
        failed = true;
        failed_step = d;
        lambda *= 5;
      }
    }
    if (!accepted && fresh) break;
    if (!accepted) need_jacobian = true;
    if (small) {
      ++it;
      break;
    }
  }
  return it;
}

}  // namespace

void ValidateRefineOptions(const RefineOptions& o) {
  auto bad = [](const std::string& what) { throw std::invalid_argument(what); };
  if (o.similarity != RefineSimilarity::kGradientCorrelation &&
      o.similarity != RefineSimilarity::kNcc)
    bad("similarity " + std::to_string(static_cast<int>(o.similarity)) + " is unknown");
  if (o.num_levels < 1 || o.num_levels > 8)
    bad("num_levels = " + std::to_string(o.num_levels) + ": expected 1 to 8");
  if (o.finest_level < 0 || o.finest_level > 6)
    bad("finest_level = " + std::to_string(o.finest_level) + ": expected 0 to 6");
  if (!(o.weight_view1 >= 0) || !(o.weight_view2 >= 0) || !std::isfinite(o.weight_view1) ||
      !std::isfinite(o.weight_view2) || !(o.weight_view1 + o.weight_view2 > 0))
    bad("view weights (" + Fmt(o.weight_view1) + ", " + Fmt(o.weight_view2) +
        ") must be finite, >= 0 and not both 0");
  if (o.max_iterations < 0 || o.max_iterations > 1000)
    bad("max_iterations = " + std::to_string(o.max_iterations) + ": expected 0 to 1000");
  if (!(o.roi_margin_px >= 0) || !(o.roi_margin_px <= 256))
    bad("roi_margin_px = " + Fmt(o.roi_margin_px) + ": expected 0 to 256 px");
  if (o.min_roi_pixels < 8)
    bad("min_roi_pixels = " + std::to_string(o.min_roi_pixels) + ": expected at least 8");
  if (!(o.step_voxels > 0.01) || !(o.step_voxels <= 16))
    bad("step_voxels = " + Fmt(o.step_voxels) + " must lie in (0.01, 16]");
  if (!(o.fd_step_px > 0) || !(o.fd_step_px <= 8))
    bad("fd_step_px = " + Fmt(o.fd_step_px) + " must lie in (0, 8]");
  if (o.broyden_updates && o.analytic_jacobian)
    bad("broyden_updates updates a finite-difference Jacobian: set analytic_jacobian = false "
        "(the analytic Jacobian costs one render, which an update would not save)");
  if (!(o.tolerance_deg > 0) || !(o.tolerance_mm > 0) || !std::isfinite(o.tolerance_deg) ||
      !std::isfinite(o.tolerance_mm))
    bad("tolerances (" + Fmt(o.tolerance_deg) + " deg, " + Fmt(o.tolerance_mm) +
        " mm) must be finite and positive");
  if (!(o.min_similarity >= -1) || !(o.min_similarity <= 1))
    bad("min_similarity = " + Fmt(o.min_similarity) + ": expected a value in [-1, 1]");
  if (!(o.max_rotation_change_deg > 0) || !(o.max_translation_change_mm > 0))
    bad("max_rotation_change_deg = " + Fmt(o.max_rotation_change_deg) +
        " and max_translation_change_mm = " + Fmt(o.max_translation_change_mm) +
        " must be positive");
  if (o.num_threads < 0)
    bad("num_threads = " + std::to_string(o.num_threads) + ": expected >= 0 (0 = all)");
  if (o.device != Device::kCpu && o.device != Device::kCuda)
    bad("device " + std::to_string(static_cast<int>(o.device)) + " is unknown");
  if (o.cuda_frames_in_flight < 1 || o.cuda_frames_in_flight > kMaxFramesInFlight)
    bad("cuda_frames_in_flight = " + std::to_string(o.cuda_frames_in_flight) + ": expected 1 to " +
        std::to_string(kMaxFramesInFlight));
  if (o.cuda_render_threads < 1 || o.cuda_render_threads > kMaxRenderThreads)
    bad("cuda_render_threads = " + std::to_string(o.cuda_render_threads) + ": expected 1 to " +
        std::to_string(kMaxRenderThreads));
}

namespace {

Context MakeContext(const RefineInput& in, const RefineOptions& o, int levels_needed) {
  ValidateRefineOptions(o);
  if (in.prepared != nullptr && in.prepared->num_levels() < levels_needed)
    throw std::invalid_argument("the prepared volumes have " +
                                std::to_string(in.prepared->num_levels()) +
                                " pyramid levels: this call needs " +
                                std::to_string(levels_needed));
  for (int v = 0; v < 2; ++v) ValidateConeView(in.views[v], v);
  if (in.views[0].width != in.views[1].width || in.views[0].height != in.views[1].height)
    throw std::invalid_argument("view 1 is " + std::to_string(in.views[1].width) + " x " +
                                std::to_string(in.views[1].height) + " px but view 0 is " +
                                std::to_string(in.views[0].width) + " x " +
                                std::to_string(in.views[0].height) +
                                ": both views need one image size");
  if (in.images == nullptr) throw std::invalid_argument("images are null");
  Context ctx;
  ctx.input = &in;
  ctx.options = &o;
  ctx.W = in.views[0].width;
  ctx.H = in.views[0].height;
  const int coarsest = o.finest_level + levels_needed - 1;
  if ((ctx.W >> coarsest) < 16 || (ctx.H >> coarsest) < 16)
    throw std::invalid_argument("images of " + std::to_string(ctx.W) + " x " +
                                std::to_string(ctx.H) + " px are too small for pyramid level " +
                                std::to_string(coarsest) +
                                ": expected at least 16 px per side there (fewer num_levels or a "
                                "lower finest_level)");
  ctx.num_levels = levels_needed;
  if (in.prepared != nullptr) {
    ctx.pyramids = &in.prepared->levels();
  } else {
    ctx.owned = MakeLevels(in.volume, in.bone, levels_needed, false);
    ctx.pyramids = ctx.owned.get();
  }
  for (int v = 0; v < 2; ++v) {
    std::vector<std::vector<uint8_t>> usable(levels_needed);  // empty: every pixel
    if (in.image_masks) {
      usable = ImagePyramid(in.image_masks + static_cast<long long>(v) * ctx.W * ctx.H, ctx.W,
                            ctx.H, o.finest_level, levels_needed, true);
    }
    for (int k = 0; k < levels_needed; ++k) {
      const int level = o.finest_level + k;
      ctx.allowed[v].push_back(AllowedPixels(usable[k], ctx.W >> level, ctx.H >> level));
    }
  }
  // Lever: half the diagonal of the bone's box (mm).
  const LevelVolume& b = ctx.Bone(0);
  if (!b.empty) {
    const Vec3<double> lo = b.grid.model_from_voxel.Apply({b.bbox_lo[0], b.bbox_lo[1], b.bbox_lo[2]});
    const Vec3<double> hi = b.grid.model_from_voxel.Apply({b.bbox_hi[0], b.bbox_hi[1], b.bbox_hi[2]});
    const Vec3<double> d = hi - lo;
    ctx.lever_mm = std::clamp(0.5 * std::sqrt(Dot(d, d)), 10.0, 500.0);
  }
  return ctx;
}

// Per-frame view weights [F, 2]: finite, >= 0, and a positive combined weight in some view.
void ValidateViewWeights(const RefineInput& in, const RefineOptions& o, int num_frames) {
  if (in.view_weights == nullptr) return;
  for (int f = 0; f < num_frames; ++f) {
    const double w1 = in.view_weights[2LL * f], w2 = in.view_weights[2LL * f + 1];
    if (!(w1 >= 0) || !(w2 >= 0) || !std::isfinite(w1) || !std::isfinite(w2) ||
        !(w1 * o.weight_view1 + w2 * o.weight_view2 > 0))
      throw std::invalid_argument("view weights of frame " + std::to_string(f) + " (" + Fmt(w1) +
                                  ", " + Fmt(w2) + ") must be finite, >= 0 and leave a view "
                                  "with a positive weight (options: " + Fmt(o.weight_view1) +
                                  ", " + Fmt(o.weight_view2) + ")");
  }
}

bool FinitePose(const double* p) {
  for (int i = 0; i < 6; ++i)
    if (!std::isfinite(p[i])) return false;
  return true;
}

// The gate's pose-change limits: the pose has turned or moved further from the start than
// they allow (RefineStatus::kMovedFar).
bool MovedFar(const Pose& pose, const Pose& start, const RefineOptions& o) {
  return RotationAngleDeg(pose.R, start.R) > o.max_rotation_change_deg ||
         (pose.t - start.t).norm() > o.max_translation_change_mm;
}

void RefineOne(const Context& ctx, int frame, const double* init, Renders renders,
               RefineResult* r) {
  const auto t0 = std::chrono::steady_clock::now();
  const double cpu0 = ThreadCpuSeconds();
  const RefineOptions& o = *ctx.options;
  *r = RefineResult{};
  renders.result = r;
  for (int i = 0; i < 6; ++i) r->pose[i] = init[i];
  r->similarity[0] = r->similarity[1] = r->similarity_total = kNaN;
  if (!FinitePose(init)) {
    r->status = RefineStatus::kInvalidStart;
    r->rotation_change_deg = r->translation_change_mm = kNaN;
    return;
  }
  const Pose start = Pose::FromArray(init);
  Pose pose = start;
  const FrameImages images = MakeFrameImages(ctx, frame);
  bool overlap = true;
  for (int level = o.finest_level + o.num_levels - 1; level >= o.finest_level; --level) {
    FrameLevel fl;
    double arr[6];
    pose.ToArray(arr);
    PrepareLevel(ctx, frame, images, level, arr, renders, &fl);
    if (!fl.views[0].used && !fl.views[1].used) {
      overlap = false;
      continue;  // a finer level may still see the bone
    }
    overlap = true;
    r->iterations += RefineLevel(ctx, fl, &pose, renders);
    // A pose that has moved beyond the gate's limits stops here: finer levels would rarely
    // bring it back (none of the 96 independent-renderer frames from landmark poses changed
    // its pose or status; they took 11 % fewer rays, and failing frames far fewer).
    if (MovedFar(pose, start, o)) break;
  }
  pose.ToArray(r->pose);
  // Final similarity at the finest level, over the final pose's region.
  FrameLevel fl;
  PrepareLevel(ctx, frame, images, o.finest_level, r->pose, renders, &fl);
  std::vector<double> res, sim;
  Residuals(ctx, fl, std::vector<double>(r->pose, r->pose + 6), renders, &res,
            fl.views[0].NumResiduals() + fl.views[1].NumResiduals(), &sim);
  double wsum = 0, ssum = 0;
  for (int v = 0; v < 2; ++v) {
    r->similarity[v] = sim[v];
    if (fl.views[v].used && std::isfinite(sim[v])) {
      wsum += fl.views[v].weight;
      ssum += fl.views[v].weight * sim[v];
    }
  }
  r->similarity_total = wsum > 0 ? ssum / wsum : kNaN;
  r->rotation_change_deg = RotationAngleDeg(pose.R, start.R);
  r->translation_change_mm = (pose.t - start.t).norm();
  if (!overlap || !(wsum > 0)) {
    r->status = RefineStatus::kNoOverlap;
  } else if (MovedFar(pose, start, o)) {
    r->status = RefineStatus::kMovedFar;
  } else if (!(r->similarity_total >= o.min_similarity)) {
    r->status = RefineStatus::kLowSimilarity;
  } else {
    r->status = RefineStatus::kConverged;
  }
  r->converged = r->status == RefineStatus::kConverged;
  r->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r->host_seconds += ThreadCpuSeconds() - cpu0;  // less its renders' share (RenderRequests)
}

}  // namespace

ConeView PyramidView(const ConeView& view, int level) {
  if (level < 0 || level > 16)
    throw std::invalid_argument("pyramid level " + std::to_string(level) + ": expected 0 to 16");
  const int f = 1 << level;
  ConeView v = view;
  v.width = view.width >> level;
  v.height = view.height >> level;
  if (v.width < 1 || v.height < 1)
    throw std::invalid_argument("pyramid level " + std::to_string(level) + " leaves no pixel of a " +
                                std::to_string(view.width) + " x " + std::to_string(view.height) +
                                " image");
  v.pitch_u = view.pitch_u * f;
  v.pitch_v = view.pitch_v * f;
  // Level pixel (x', y') covers full pixels f x' .. f x' + f - 1: its centre is full pixel
  // f x' + (f - 1) / 2. The level's centre pixel ((w - 1) / 2) therefore sits at this offset
  // (full pixels) from the full image's centre.
  const double ox = f * 0.5 * (v.width - 1) + 0.5 * (f - 1) - 0.5 * (view.width - 1);
  const double oy = f * 0.5 * (v.height - 1) + 0.5 * (f - 1) - 0.5 * (view.height - 1);
  for (int c = 0; c < 3; ++c)
    v.intensifier_centre[c] =
        view.intensifier_centre[c] + ox * view.pitch_u * view.u[c] + oy * view.pitch_v * view.v[c];
  return v;
}

RefineVolumes::RefineVolumes(const VolumeGrid& volume, const VolumeGrid& bone, int num_levels) {
  if (num_levels < 1 || num_levels > 8)
    throw std::invalid_argument("num_levels = " + std::to_string(num_levels) + ": expected 1 to 8");
  levels_ = MakeLevels(volume, bone, num_levels, true);
}

RefineVolumes::~RefineVolumes() = default;

int RefineVolumes::num_levels() const { return static_cast<int>(levels_->volumes.size()); }

void RefineFrames(const RefineInput& input, const double* init_poses, int num_frames,
                  RefineResult* results, const RefineOptions& options) {
  if (options.device == Device::kCuda) {
    internal::RefineFramesGathered(input, init_poses, num_frames, results, options,
                                   options.cuda_frames_in_flight);
    return;
  }
  if (num_frames < 0)
    throw std::invalid_argument("frame count " + std::to_string(num_frames) + " is negative");
  const Context ctx = MakeContext(input, options, options.num_levels);
  ValidateViewWeights(input, options, num_frames);
  if (num_frames == 0) return;
  const int threads = ResolveThreadCount(options.num_threads);
  const int outer = std::min(threads, num_frames);
  const int inner = std::max(1, threads / num_frames);
  ParallelFor(num_frames, outer, [&](long long f) {
    RefineOne(ctx, static_cast<int>(f), init_poses + 6 * f, Renders{inner, nullptr}, results + f);
  });
  ReleaseFreedMemory();
}

namespace internal {

void RefineFramesGathered(const RefineInput& input, const double* init_poses, int num_frames,
                          RefineResult* results, const RefineOptions& options,
                          int frames_in_flight) {
  if (num_frames < 0)
    throw std::invalid_argument("frame count " + std::to_string(num_frames) + " is negative");
  if (frames_in_flight < 1)
    throw std::invalid_argument("frames_in_flight = " + std::to_string(frames_in_flight) +
                                ": expected at least 1");
  const Context ctx = MakeContext(input, options, options.num_levels);
  ValidateViewWeights(input, options, num_frames);
  if (num_frames == 0) return;
  const int workers = std::min(frames_in_flight, num_frames);
  // The batch calls' own host threads (RefineOptions::cuda_render_threads; default 1, the
  // render thread alone).
  RenderGather gather(workers, PixelRenderOptions(options, options.cuda_render_threads));
  std::atomic<int> next{0};
  // One thread per frame in flight (most of their time they wait for the gathered render).
  ParallelFor(workers, workers, [&](long long) {
    struct Leave {  // also when a frame throws: batches must not wait for this worker
      RenderGather* gather;
      ~Leave() { gather->WorkerDone(); }
    } leave{&gather};
    try {
      for (int f; (f = next.fetch_add(1)) < num_frames;) {
        RefineOne(ctx, f, init_poses + 6LL * f, Renders{1, &gather}, results + f);
      }
    } catch (...) {
      next.store(num_frames);  // no new frames once one has failed
      throw;
    }
  });
  ReleaseFreedMemory();
}

LevelLinearisation LineariseLevel(const RefineInput& input, const RefineOptions& options,
                                  int level, const double* pose, const double* poses, int num_poses) {
  ValidateRefineOptions(options);
  const Context ctx = MakeContext(input, options, level - options.finest_level + 1);
  FrameLevel fl;
  PrepareLevel(ctx, 0, MakeFrameImages(ctx, 0), level, pose, Renders{}, &fl);
  const int n_res = fl.views[0].NumResiduals() + fl.views[1].NumResiduals();
  LevelLinearisation out;
  Residuals(ctx, fl, std::vector<double>(poses, poses + 6LL * num_poses), Renders{}, &out.residuals,
            n_res);
  const NormalEquations ne = NormalEquationsAt(ctx, fl, std::vector<double>(pose, pose + 6), Renders{});
  for (int j = 0; j < 6; ++j) {
    out.g[j] = ne.g[j];
    for (int k = 0; k < 6; ++k) out.A[6 * j + k] = ne.A(j, k);
  }
  out.cost = ne.cost;
  out.lever_mm = ctx.lever_mm;
  return out;
}

}  // namespace internal

void EvaluateRefineSimilarity(const RefineInput& input, const double* poses, int num_frames,
                              int level, double* similarity, uint8_t* roi,
                              const RefineOptions& options) {
  if (num_frames < 0)
    throw std::invalid_argument("frame count " + std::to_string(num_frames) + " is negative");
  if (level < options.finest_level || level >= options.finest_level + options.num_levels)
    throw std::invalid_argument("level " + std::to_string(level) + " is outside the pyramid [" +
                                std::to_string(options.finest_level) + ", " +
                                std::to_string(options.finest_level + options.num_levels - 1) +
                                "]");
  ValidatePoses(poses, num_frames);
  const Context ctx = MakeContext(input, options, level - options.finest_level + 1);
  ValidateViewWeights(input, options, num_frames);
  const int threads = ResolveThreadCount(options.num_threads);
  const long long level_size =
      static_cast<long long>(input.views[0].width >> level) * (input.views[0].height >> level);
  ParallelFor(num_frames, std::min(threads, std::max(num_frames, 1)), [&](long long f) {
    FrameLevel fl;
    PrepareLevel(ctx, static_cast<int>(f), MakeFrameImages(ctx, static_cast<int>(f)), level,
                 poses + 6 * f, Renders{}, &fl);
    std::vector<double> res, sim;
    Residuals(ctx, fl, std::vector<double>(poses + 6 * f, poses + 6 * f + 6), Renders{}, &res,
              fl.views[0].NumResiduals() + fl.views[1].NumResiduals(), &sim);
    for (int v = 0; v < 2; ++v) {
      similarity[2 * f + v] = sim[v];
      if (roi) {
        uint8_t* m = roi + (2 * f + v) * level_size;
        std::fill(m, m + level_size, 0);
        const ViewLevel& vl = fl.views[v];
        for (int32_t i : vl.roi) m[vl.render_px[i]] = 1;
      }
    }
  });
}

namespace {

// Mean-free normalised dot product of two feature lists.
double Ncc(const std::vector<double>& a, const std::vector<double>& b) {
  const size_t n = a.size();
  if (n == 0) return 0;
  double ma = 0, mb = 0;
  for (size_t i = 0; i < n; ++i) ma += a[i], mb += b[i];
  ma /= n;
  mb /= n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return (saa > 1e-30 && sbb > 1e-30) ? sab / std::sqrt(saa * sbb) : 0.0;
}

void CheckImageArgs(const float* a, const float* b, int W, int H) {
  if (a == nullptr || b == nullptr) throw std::invalid_argument("image data is null");
  if (W < 1 || H < 1)
    throw std::invalid_argument("image size " + std::to_string(W) + " x " + std::to_string(H) +
                                " must be positive");
}

}  // namespace

double GradientCorrelation(const float* a, const float* b, const uint8_t* mask, int W, int H) {
  CheckImageArgs(a, b, W, H);
  std::vector<double> ax, ay, bx, by;
  for (int y = 1; y < H - 1; ++y)
    for (int x = 1; x < W - 1; ++x) {
      const long long i = static_cast<long long>(y) * W + x;
      if (mask && !mask[i]) continue;
      ax.push_back(0.5 * (static_cast<double>(a[i + 1]) - a[i - 1]));
      ay.push_back(0.5 * (static_cast<double>(a[i + W]) - a[i - W]));
      bx.push_back(0.5 * (static_cast<double>(b[i + 1]) - b[i - 1]));
      by.push_back(0.5 * (static_cast<double>(b[i + W]) - b[i - W]));
    }
  return 0.5 * (Ncc(ax, bx) + Ncc(ay, by));
}

double NormalizedCrossCorrelation(const float* a, const float* b, const uint8_t* mask, int W,
                                  int H) {
  CheckImageArgs(a, b, W, H);
  std::vector<double> va, vb;
  for (long long i = 0; i < static_cast<long long>(W) * H; ++i) {
    if (mask && !mask[i]) continue;
    va.push_back(a[i]);
    vb.push_back(b[i]);
  }
  return Ncc(va, vb);
}

}  // namespace fluororeg
