// Per-ray and per-sample math of the renderers, written once for the CPU loops
// (cpp/src/render_cpu.cc) and the CUDA kernels (cuda/render_cuda.cu).
#pragma once

#include <cstdint>

#include "fluororeg/geometry.h"

namespace fluororeg {
namespace kernels {

FLUORO_HD int IMin(int a, int b) { return a < b ? a : b; }

// ---------------------------------------------------------------------------------------
// Shear-warp (parallel beam).
//
// For one pose, the ray through pixel (x, y) is, in voxel coordinates,
//   v(z) = v0(x, y) + z * dv,   z in mm along the camera +z axis.
// The principal axis c maximises |dv_c|; the volume is seen as slices along c with in-slice
// axes a (columns) and b (rows). The ray meets slice k at in-slice position
//   (Ia + k * sa, Ib + k * sb),   sa = dv_a / dv_c,  sb = dv_b / dv_c,
// where (Ia, Ib) = (v0_a - sa v0_c, v0_b - sb v0_c) are the ray's base-plane coordinates,
// affine in (x, y). Shear: the intermediate (base-plane) image on the integer grid
// Ia = a0 + p, Ib = b0 + q accumulates sum_k weight * bilinear(slice_k) where the bilinear
// weights are constant over a slice. Warp: the DRR samples the intermediate image at
// (Ia(x, y), Ib(x, y)) bilinearly. weight = 1 / |dv_c| is the ray length (mm) per slice.
//
// Slices are stored padded with one zero voxel on each side of a and b, so that
// padded index = index + 1 and bilinear reads never leave the slice.
struct ShearWarpSetup {
  int axis;            // c: 0 = i, 1 = j, 2 = k
  int n_slices;        // voxels along c
  int slice_w, slice_h;  // padded slice size (n_a + 2, n_b + 2)
  double sa, sb;       // in-slice shift per slice, voxels
  double weight;       // mm of ray per slice step
  int a0, b0;          // base-plane origin of the intermediate image
  int inter_w, inter_h;  // intermediate image size (0 when the volume misses the image)
  double wa[3], wb[3];   // Ia = wa . (x, y, 1), Ib = wb . (x, y, 1)
};

// Voxel axes (a, b) in-slice for principal axis c.
FLUORO_HD void InSliceAxes(int c, int* a, int* b) {
  if (c == 0) {
    *a = 1;
    *b = 2;
  } else if (c == 1) {
    *a = 0;
    *b = 2;
  } else {
    *a = 0;
    *b = 1;
  }
}

// Integer offset and fractional bilinear weight of slice k: the sample for intermediate
// column p sits at padded column p + off_a + 1 with fraction fa (same for rows).
FLUORO_HD void SliceOffsets(const ShearWarpSetup& s, int k, int* off_a, int* off_b, float* fa,
                            float* fb) {
  const double a = s.a0 + k * s.sa;
  const double b = s.b0 + k * s.sb;
  const double fla = floor(a), flb = floor(b);
  *off_a = static_cast<int>(fla);
  *off_b = static_cast<int>(flb);
  *fa = static_cast<float>(a - fla);
  *fb = static_cast<float>(b - flb);
}

// Bilinear read of a padded slice at padded (col, row) + (fa, fb).
FLUORO_HD float BilinearPadded(const float* slice, int pitch, int col, int row, float fa,
                               float fb) {
  const float* r0 = slice + static_cast<long long>(row) * pitch + col;
  const float* r1 = r0 + pitch;
  return (1.f - fb) * ((1.f - fa) * r0[0] + fa * r0[1]) + fb * ((1.f - fa) * r1[0] + fa * r1[1]);
}

// Range of intermediate columns p (inclusive) for which slice k contributes:
// padded column p + off_a + 1 must lie in [0, slice_w - 2].
FLUORO_HD void SliceColumnRange(const ShearWarpSetup& s, int off_a, int* p_begin, int* p_end) {
  int lo = -1 - off_a, hi = s.slice_w - 3 - off_a;
  if (lo < 0) lo = 0;
  if (hi > s.inter_w - 1) hi = s.inter_w - 1;
  *p_begin = lo;
  *p_end = hi + 1;  // exclusive
}

// The shear accumulation of one intermediate pixel over all slices (CUDA uses this per
// thread; the CPU backend runs the same SliceOffsets/BilinearPadded slice by slice).
FLUORO_HD float ShearPixel(const ShearWarpSetup& s, const float* padded_volume, int p, int q) {
  float acc = 0.f;
  const long long slice_size = static_cast<long long>(s.slice_w) * s.slice_h;
  for (int k = 0; k < s.n_slices; ++k) {
    int oa, ob;
    float fa, fb;
    SliceOffsets(s, k, &oa, &ob, &fa, &fb);
    const int col = p + oa + 1, row = q + ob + 1;
    if (col < 0 || col > s.slice_w - 2 || row < 0 || row > s.slice_h - 2) continue;
    acc += BilinearPadded(padded_volume + k * slice_size, s.slice_w, col, row, fa, fb);
  }
  return acc * static_cast<float>(s.weight);
}

// Warp: DRR value at output pixel (x, y), zero outside the intermediate image.
FLUORO_HD float WarpPixel(const ShearWarpSetup& s, const float* inter, int x, int y) {
  const double ia = s.wa[0] * x + s.wa[1] * y + s.wa[2] - s.a0;
  const double ib = s.wb[0] * x + s.wb[1] * y + s.wb[2] - s.b0;
  const double fp = floor(ia), fq = floor(ib);
  const int p = static_cast<int>(fp), q = static_cast<int>(fq);
  const float fa = static_cast<float>(ia - fp), fb = static_cast<float>(ib - fq);
  float v = 0.f;
  for (int dq = 0; dq < 2; ++dq) {
    const int qq = q + dq;
    if (qq < 0 || qq >= s.inter_h) continue;
    const float wq = dq ? fb : 1.f - fb;
    for (int dp = 0; dp < 2; ++dp) {
      const int pp = p + dp;
      if (pp < 0 || pp >= s.inter_w) continue;
      const float wp = dp ? fa : 1.f - fa;
      v += wq * wp * inter[static_cast<long long>(qq) * s.inter_w + pp];
    }
  }
  return v;
}

// ---------------------------------------------------------------------------------------
// Cone beam ray marching.
//
// The volume is the trilinear interpolant of the voxel values inside the box spanned by the
// voxel centres, [0, nx-1] x [0, ny-1] x [0, nz-1] in voxel coordinates, and zero outside.
// A ray from S to the pixel's detector point P is sampled at the midpoints
// t_m = t_in + (m + 1/2) dt of a regular grid over its clipped extent [t_in, t_out]; the last
// sample is weighted by its partial step. Blocks of kBlock^3 voxels whose trilinear support
// holds only zeros are skipped without changing the result.
constexpr int kBlock = 8;

struct ConeRaySetup {
  Vec3<float> src;     // S in voxel coordinates
  Vec3<float> det;     // pixel (0, 0) detector point in voxel coordinates
  Vec3<float> du, dv;  // voxel-coordinate step per pixel along x and y
  // model_from_voxel is a rotation times diag(spacing) plus a shift (ValidateVolume checks),
  // so a voxel-coordinate displacement d is |diag(spacing) d| millimetres long.
  float spacing[3];    // mm per voxel along i, j, k
  float step_voxels;   // marching step in voxel-coordinate units
  int nx, ny, nz;
  int bx, by, bz;      // block grid size
};

// Trilinear interpolation at a point inside the box of voxel centres (x in [0, nx-1], ...).
// Truncation equals floor there (and maps a rounding error of -1e-7 to 0); the upper clamp
// keeps the last cell for points on the far faces.
FLUORO_HD float TrilinearInBox(const float* vol, int nx, int ny, int nz, float x, float y,
                               float z) {
  const int i = IMin(static_cast<int>(x), nx - 2);
  const int j = IMin(static_cast<int>(y), ny - 2);
  const int k = IMin(static_cast<int>(z), nz - 2);
  const float fx = x - i, fy = y - j, fz = z - k;
  const long long sy = nx, sz = static_cast<long long>(nx) * ny;
  const float* p = vol + k * sz + j * sy + i;
  const float c00 = p[0] + fx * (p[1] - p[0]);
  const float c10 = p[sy] + fx * (p[sy + 1] - p[sy]);
  const float c01 = p[sz] + fx * (p[sz + 1] - p[sz]);
  const float c11 = p[sz + sy] + fx * (p[sz + sy + 1] - p[sz + sy]);
  const float c0 = c00 + fy * (c10 - c00);
  const float c1 = c01 + fy * (c11 - c01);
  return c0 + fz * (c1 - c0);
}

// Clip the parametric ray o + t d (t in [0, 1]) to the box [lo, hi] per axis.
FLUORO_HD bool ClipToBox(const Vec3<float>& o, const Vec3<float>& d, const float lo[3],
                         const float hi[3], float* t0, float* t1) {
  float a = 0.f, b = 1.f;
  const float oo[3] = {o.x, o.y, o.z}, dd[3] = {d.x, d.y, d.z};
  for (int c = 0; c < 3; ++c) {
    if (fabsf(dd[c]) < 1e-12f) {
      if (oo[c] < lo[c] || oo[c] > hi[c]) return false;
      continue;
    }
    float ta = (lo[c] - oo[c]) / dd[c], tb = (hi[c] - oo[c]) / dd[c];
    if (ta > tb) {
      const float tmp = ta;
      ta = tb;
      tb = tmp;
    }
    a = ta > a ? ta : a;
    b = tb < b ? tb : b;
  }
  *t0 = a;
  *t1 = b;
  return b > a;
}

// Line integral (dimensionless) along the ray of pixel (x, y).
// occupancy [bz, by, bx]: 1 where the block's trilinear support holds a non-zero voxel.
FLUORO_HD float ConeRayIntegral(const ConeRaySetup& s, const float* vol,
                                const uint8_t* occupancy, int x, int y) {
  const Vec3<float> P = s.det + static_cast<float>(x) * s.du + static_cast<float>(y) * s.dv;
  const Vec3<float> d = P - s.src;
  const float lo[3] = {0.f, 0.f, 0.f};
  const float hi[3] = {static_cast<float>(s.nx - 1), static_cast<float>(s.ny - 1),
                       static_cast<float>(s.nz - 1)};
  float t0, t1;
  if (!ClipToBox(s.src, d, lo, hi, &t0, &t1)) return 0.f;
  const float len_vox = sqrtf(Dot(d, d));
  const float dmm[3] = {d.x * s.spacing[0], d.y * s.spacing[1], d.z * s.spacing[2]};
  const float len_mm = sqrtf(dmm[0] * dmm[0] + dmm[1] * dmm[1] + dmm[2] * dmm[2]);
  const float dt = s.step_voxels / len_vox;
  // Full steps sample their midpoints; a last partial step of length rem samples its own.
  const int n_full = static_cast<int>(floorf((t1 - t0) / dt));
  const float rem = (t1 - t0) - n_full * dt;
  const Vec3<float> step = dt * d;
  Vec3<float> pos = s.src + (t0 + 0.5f * dt) * d;
  float acc = 0.f;
  for (int m = 0; m < n_full; ++m, pos = pos + step) {
    const int bi = IMin(static_cast<int>(pos.x) / kBlock, s.bx - 1);
    const int bj = IMin(static_cast<int>(pos.y) / kBlock, s.by - 1);
    const int bk = IMin(static_cast<int>(pos.z) / kBlock, s.bz - 1);
    if (!occupancy[(static_cast<long long>(bk) * s.by + bj) * s.bx + bi]) {
      // Jump to the last full-step sample still inside this empty block (a small margin:
      // a sample exactly on the far face belongs to the next block).
      const float blo[3] = {static_cast<float>(bi * kBlock), static_cast<float>(bj * kBlock),
                            static_cast<float>(bk * kBlock)};
      const float bhi[3] = {blo[0] + kBlock, blo[1] + kBlock, blo[2] + kBlock};
      float e0, e1;
      if (ClipToBox(s.src, d, blo, bhi, &e0, &e1)) {
        int m_last = static_cast<int>(floorf((e1 - t0) / dt - 0.5f - 1e-3f));
        if (m_last > n_full - 1) m_last = n_full - 1;
        if (m_last > m) {
          pos = s.src + (t0 + (m_last + 0.5f) * dt) * d;
          m = m_last;
        }
      }
      continue;
    }
    acc += TrilinearInBox(vol, s.nx, s.ny, s.nz, pos.x, pos.y, pos.z);
  }
  acc *= dt;
  if (rem > 0.f) {
    const Vec3<float> q = s.src + (t0 + n_full * dt + 0.5f * rem) * d;
    acc += rem * TrilinearInBox(vol, s.nx, s.ny, s.nz, q.x, q.y, q.z);
  }
  return acc * len_mm;
}

}  // namespace kernels
}  // namespace fluororeg

namespace fluororeg {
namespace kernels {

// ---------------------------------------------------------------------------------------
// Point projection: pixel coordinates (NaN when the point is not in front of the source)
// and the in-field-of-view flag of one model point X [3] mm under a pose.
FLUORO_HD void ProjectConePoint(const ConeView& view, const Affine3<double>& world_from_model,
                                const double* X, double* xy, uint8_t* in_fov) {
  const Vec3<double> Xw = world_from_model.Apply(Vec3<double>{X[0], X[1], X[2]});
  double px, py;
  const bool front = ProjectCone(view, Xw, &px, &py);
  xy[0] = front ? px : nan("");
  xy[1] = front ? py : nan("");
  *in_fov = (front && InImage(px, py, view.width, view.height)) ? 1 : 0;
}

FLUORO_HD void ProjectParallelPoint(const ParallelCamera& camera,
                                    const Affine3<double>& camera_from_model, double scale,
                                    const double* X, double* xy, uint8_t* in_fov) {
  const Vec3<double> Xc = camera_from_model.Apply(Vec3<double>{X[0], X[1], X[2]});
  ProjectParallel(camera, Xc, scale, &xy[0], &xy[1]);
  *in_fov = InImage(xy[0], xy[1], camera.width, camera.height) ? 1 : 0;
}

}  // namespace kernels
}  // namespace fluororeg
