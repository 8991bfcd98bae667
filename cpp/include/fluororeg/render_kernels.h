// The renderers' kernel bodies, written once for both backends: each FLUORO_HD function below
// computes one output element (or one row segment) with its loops included; the CPU launchers
// (cpp/src/render/render_cpu.cc) run them in ParallelFor, the CUDA launchers
// (cuda/render_cuda.cu) in grid-stride loops over flattened 64-bit indices. Only the loops over
// output elements and the memory they live in differ between the backends.
#pragma once

#include <cstdint>

#include "fluororeg/geometry.h"

namespace fluororeg {
namespace kernels {

FLUORO_HD int IMin(int a, int b) { return a < b ? a : b; }
FLUORO_HD int IClamp(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

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
  // a0, b0 are integers: only the shift k * (sa, sb) (|.| <= a few hundred voxels) needs a
  // floor, in float (ulp <= 3e-5 voxel; double math costs the CUDA kernel dearly).
  const float a = static_cast<float>(k) * static_cast<float>(s.sa);
  const float b = static_cast<float>(k) * static_cast<float>(s.sb);
  const float fla = floorf(a), flb = floorf(b);
  *off_a = s.a0 + static_cast<int>(fla);
  *off_b = s.b0 + static_cast<int>(flb);
  *fa = a - fla;
  *fb = b - flb;
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

// The volume as padded slices along one axis, in host or device memory (see
// internal::PaddedSlices), with the stretches of each pair of neighbouring padded rows where a
// bilinear sample can be non-zero.
struct SliceStack {
  const float* data;                // [n_slices, slice_h, slice_w]
  const int64_t* stretch_offset;    // [n_slices * slice_h + 1] the stretches of padded rows
                                    // (r, r + 1) of a slice (r = k * slice_h + row):
                                    // stretch_offset[r] .. stretch_offset[r + 1]
  const int32_t* stretches;         // [stretch_offset[end], 2] [lo, hi) of left taps, in column
                                    // order and disjoint (see internal::RowPairStretches)
};

// Gaps between runs of non-zero voxels narrower than this many columns are not skipped: each
// stretch has a fixed cost (a chosen value, not a measured optimum: 32 against none measured
// the same within this machine's noise on the parallel-beam masks).
constexpr int kMinSkippedGap = 32;

// emit(lo, hi) for each stretch [lo, hi) of left taps (a bilinear sample at padded column A
// reads columns floor(A) and floor(A) + 1) that can meet a non-zero voxel of padded rows row and
// row + 1 of slice k, in column order. A sample whose left tap lies outside every stretch is
// exactly zero; the shears skip those (most of a hollow mask's row). The stretches are built
// once per slice stack (internal::RowPairStretches), so this is one read of two offsets and a
// loop over (usually one) pair.
template <typename Emit>
FLUORO_HD_ALWAYS_INLINE void ForEachNonZeroStretch(const SliceStack& stack, int slice_h, int k,
                                                   int row, Emit&& emit) {
  const int64_t* off = stack.stretch_offset + static_cast<long long>(k) * slice_h + row;
  const int32_t* st = stack.stretches + 2 * off[0];
  const int32_t* const end = stack.stretches + 2 * off[1];
  for (; st < end; st += 2) emit(st[0], st[1]);
}

// Shear of intermediate row q over columns [p_begin, p_end) by slice k, if the row's rays
// cross it: add(pb, pe, r0, r1, w00, w10, w01, w11) receives the columns [pb, pe) the slice
// contributes to (one call per ForEachNonZeroStretch), the two padded rows r0, r1 it reads
// (indexed by p: column p samples r0[p], r0[p + 1], r1[p], r1[p + 1]) and the bilinear weights,
// constant over the slice. The weight s.weight is applied once per pixel by the caller.
template <typename Add>
FLUORO_HD_ALWAYS_INLINE void ShearSliceRow(const ShearWarpSetup& s, const SliceStack& stack,
                                           int k, int q, int p_begin, int p_end, Add& add) {
  int oa, ob;
  float fa, fb;
  SliceOffsets(s, k, &oa, &ob, &fa, &fb);
  const int row = q + ob + 1;
  if (row < 0 || row > s.slice_h - 2) return;
  int pb, pe;
  SliceColumnRange(s, oa, &pb, &pe);
  if (pb < p_begin) pb = p_begin;
  if (pe > p_end) pe = p_end;
  if (pb >= pe) return;
  const float w00 = (1.f - fa) * (1.f - fb), w10 = fa * (1.f - fb);
  const float w01 = (1.f - fa) * fb, w11 = fa * fb;
  const long long slice_size = static_cast<long long>(s.slice_w) * s.slice_h;
  const float* r0 = stack.data + k * slice_size + static_cast<long long>(row) * s.slice_w + oa + 1;
  // Column p's left tap is padded column p + oa + 1.
  ForEachNonZeroStretch(stack, s.slice_h, k, row, [&](int lo, int hi) {
    const int b = lo - oa - 1 > pb ? lo - oa - 1 : pb;
    const int e = hi - oa - 1 < pe ? hi - oa - 1 : pe;
    if (b < e) add(b, e, r0, r0 + s.slice_w, w00, w10, w01, w11);
  });
}

// Shear of intermediate row q over columns [p_begin, p_end): ShearSliceRow for every slice, in
// slice order. The CUDA backend calls it for a few columns per thread (AddToColumns,
// registers); the CPU backend runs ShearSliceRow slice by slice over a band of rows
// (AddToRow: each slice streams through contiguous rows), which adds the same terms to every
// pixel in the same order.
template <typename Setup, typename Add>
FLUORO_HD void ShearRowSegment(const Setup& s, const SliceStack& stack, int q, int p_begin,
                               int p_end, Add& add) {
  for (int k = 0; k < s.n_slices; ++k) {
    ShearSliceRow(s, stack, k, q, p_begin, p_end, add);
  }
}

// Column tap of the perspective shear: padded column A = g p + ea of intermediate column p
// (>= 0 up to rounding, so truncation is floor; a tap past last_col is clamped back), its left
// column *i and fraction *fa.
FLUORO_HD void PerspectiveTap(float g, float ea, int last_col, int p, int* i, float* fa) {
  const float A = g * static_cast<float>(p) + ea;
  *i = IMin(static_cast<int>(A), last_col);
  *fa = A - static_cast<float>(*i);
}
// Row blend of padded rows r0, r1 at column i with row fraction fb.
FLUORO_HD float BlendRows(const float* r0, const float* r1, float fb, int i) {
  return r0[i] + fb * (r1[i] - r0[i]);
}
// Bilinear sample of padded rows r0, r1 for intermediate column p: the rows blended first, then
// the columns (the CPU sink blends a whole row once and reuses it for every column).
FLUORO_HD float PerspectiveSample(const float* r0, const float* r1, float g, float ea, float fb,
                                  int last_col, int p) {
  int i;
  float fa;
  PerspectiveTap(g, ea, last_col, p, &i, &fa);
  const float t0 = BlendRows(r0, r1, fb, i), t1 = BlendRows(r0, r1, fb, i + 1);
  return t0 + fa * (t1 - t0);
}

// Sinks of ShearSliceRow: a row of the intermediate image (CPU) or kWidth consecutive
// columns p0 .. p0 + kWidth - 1 in registers (CUDA). Both add the same expression per column.
struct AddToRow {
  float* row;  // [inter_w], indexed by p
  FLUORO_HD void operator()(int pb, int pe, const float* r0, const float* r1, float w00,
                            float w10, float w01, float w11) {
    for (int p = pb; p < pe; ++p) {
      row[p] += w00 * r0[p] + w10 * r0[p + 1] + w01 * r1[p] + w11 * r1[p + 1];
    }
  }
};
template <int kWidth>
struct AddToColumns {
  int p0;
  float sum[kWidth];
  FLUORO_HD void operator()(int pb, int pe, const float* r0, const float* r1, float w00,
                            float w10, float w01, float w11) {
    for (int t = 0; t < kWidth; ++t) {  // unrolled: sum stays in registers
      const int p = p0 + t;
      if (p >= pb && p < pe) {
        sum[t] += w00 * r0[p] + w10 * r0[p + 1] + w01 * r1[p] + w11 * r1[p + 1];
      }
    }
  }
  // The perspective shear's form (see PerspectiveSample).
  FLUORO_HD void operator()(int pb, int pe, const float* r0, const float* r1, float g, float ea,
                            float fb, int last_col) {
    for (int t = 0; t < kWidth; ++t) {
      const int p = p0 + t;
      if (p >= pb && p < pe) sum[t] += PerspectiveSample(r0, r1, g, ea, fb, last_col, p);
    }
  }
};

// The factor the launchers apply to the whole intermediate image: the parallel beam's mm per
// slice (the cone beam's weight varies per ray and is applied by its warp: 1).
FLUORO_HD float ShearWeight(const ShearWarpSetup& s) { return static_cast<float>(s.weight); }

// The shear values of intermediate pixels (p0 .. p0 + kWidth - 1, q) into out[0 .. kWidth-1]
// (columns at or past inter_w are not written): the per-element body of the CUDA launcher
// (the CPU launcher runs ShearSliceRow over bands of whole rows and then applies ShearWeight).
template <int kWidth, typename Setup>
FLUORO_HD void ShearColumns(const Setup& s, const SliceStack& stack, int p0, int q, float* out) {
  AddToColumns<kWidth> acc{p0, {}};
  ShearRowSegment(s, stack, q, p0, p0 + kWidth, acc);
  const float w = ShearWeight(s);
  for (int t = 0; t < kWidth; ++t) {
    if (p0 + t < s.inter_w) out[t] = acc.sum[t] * w;
  }
}

// Bilinear sample of an intermediate image inter [h, w] between pixels (p, q) .. (p+1, q+1)
// with fractions (fa, fb); zero outside it (the warps of both factorisations). Without
// branches: a tap outside the image weighs zero and reads a clamped pixel inside it. The sum
// runs from +0 tap by tap, so that a zero tap adds nothing (not even a -0) and CUDA fuses the
// same multiply-adds as a sum over the taps inside.
FLUORO_HD float SampleIntermediate(const float* inter, int w, int h, int p, int q, float fa,
                                   float fb) {
  const float ga = 1.f - fa, gb = 1.f - fb;
  const float wp0 = (p >= 0 && p < w) ? ga : 0.f;
  const float wp1 = (p >= -1 && p < w - 1) ? fa : 0.f;
  const float wq0 = (q >= 0 && q < h) ? gb : 0.f;
  const float wq1 = (q >= -1 && q < h - 1) ? fb : 0.f;
  const int p0 = IClamp(p, 0, w - 1), p1 = IClamp(p + 1, 0, w - 1);
  const long long r0 = static_cast<long long>(IClamp(q, 0, h - 1)) * w;
  const long long r1 = static_cast<long long>(IClamp(q + 1, 0, h - 1)) * w;
  float v = 0.f;
  v += wq0 * wp0 * inter[r0 + p0];
  v += wq0 * wp1 * inter[r0 + p1];
  v += wq1 * wp0 * inter[r1 + p0];
  v += wq1 * wp1 * inter[r1 + p1];
  return v;
}

// Where the warp samples the intermediate image for one output pixel: the bilinear cell's
// first pixel (p, q), the fractions (fa, fb) and the factor on the sample (the cone beam's mm
// per slice, 0 for a ray that turns away from the slices; 1 for the parallel beam). The CPU's
// cone-beam warp computes the taps of a run of pixels first (a loop without memory reads, which
// vectorises), then samples them; elsewhere WarpPixel does both per pixel.
struct WarpTap {
  int p, q;
  float fa, fb, scale;
};

FLUORO_HD WarpTap WarpPixelTap(const ShearWarpSetup& s, int x, int y) {
  const double ia = s.wa[0] * x + s.wa[1] * y + s.wa[2] - s.a0;
  const double ib = s.wb[0] * x + s.wb[1] * y + s.wb[2] - s.b0;
  const double fp = floor(ia), fq = floor(ib);
  return {static_cast<int>(fp), static_cast<int>(fq), static_cast<float>(ia - fp),
          static_cast<float>(ib - fq), 1.f};
}

// ---------------------------------------------------------------------------------------
// Cone beam ray marching.
//
// The volume is the trilinear interpolant of the voxel values inside the box spanned by the
// voxel centres, [0, nx-1] x [0, ny-1] x [0, nz-1] in voxel coordinates, and zero outside.
// A ray from S to the pixel's intensifier point P is sampled at the midpoints
// t_m = t_in + (m + 1/2) dt of a regular grid over its clipped extent [t_in, t_out]; the last
// sample is weighted by its partial step. Blocks of kBlock^3 voxels whose trilinear support
// holds only zeros are skipped without changing the result.
constexpr int kBlockShift = 3;
constexpr int kBlock = 1 << kBlockShift;  // 8
// Samples of a ray fetched together in an occupied block (ConeRayIntegral).
constexpr int kConeRun = 4;

struct ConeRaySetup {
  Vec3<float> src;     // S in voxel coordinates
  Vec3<float> det;     // pixel (0, 0) intensifier point in voxel coordinates
  Vec3<float> du, dv;  // voxel-coordinate step per pixel along x and y
  // model_from_voxel is a rotation times diag(spacing) plus a shift (ValidateVolume checks),
  // so a voxel-coordinate displacement d is |diag(spacing) d| millimetres long.
  float spacing[3];    // mm per voxel along i, j, k
  float step_voxels;   // marching step in voxel-coordinate units
  float stop_above;    // RenderOptions::stop_above (infinity: march the whole ray)
  int nx, ny, nz;
  int bx, by, bz;      // block grid size
  // Box (voxel coordinates) outside which the trilinear interpolant is zero: the non-zero
  // voxels' bounding box grown by one voxel, within the box of voxel centres. Samples of the
  // ray's regular grid outside it are skipped (they add zero); occupied == 0: all zero.
  int occupied;
  float support_lo[3], support_hi[3];
};

// The trilinear interpolant's cell that holds a point inside the box of voxel centres (x in
// [0, nx-1], ...): its first corner voxel p, the strides sy, sz and the point's fractions f [3].
// Truncation equals floor there (and maps a rounding error of -1e-7 to 0); the upper clamp
// keeps the last cell for points on the far faces.
struct TrilinearCell {
  const float* p;
  long long sy, sz;
  float f[3];
  FLUORO_HD TrilinearCell(const float* vol, int nx, int ny, int nz, float x, float y, float z) {
    const int i = IMin(static_cast<int>(x), nx - 2);
    const int j = IMin(static_cast<int>(y), ny - 2);
    const int k = IMin(static_cast<int>(z), nz - 2);
    f[0] = x - i, f[1] = y - j, f[2] = z - k;
    sy = nx, sz = static_cast<long long>(nx) * ny;
    p = vol + k * sz + j * sy + i;
  }
};

// Trilinear interpolation at a point inside the box of voxel centres.
FLUORO_HD float TrilinearInBox(const float* vol, int nx, int ny, int nz, float x, float y,
                               float z) {
  const TrilinearCell cell(vol, nx, ny, nz, x, y, z);
  const float* p = cell.p;
  const float fx = cell.f[0], fy = cell.f[1], fz = cell.f[2];
  const long long sy = cell.sy, sz = cell.sz;
  const float c00 = p[0] + fx * (p[1] - p[0]);
  const float c10 = p[sy] + fx * (p[sy + 1] - p[sy]);
  const float c01 = p[sz] + fx * (p[sz + 1] - p[sz]);
  const float c11 = p[sz + sy] + fx * (p[sz + sy + 1] - p[sz + sy]);
  const float c0 = c00 + fy * (c10 - c00);
  const float c1 = c01 + fy * (c11 - c01);
  return c0 + fz * (c1 - c0);
}

// TrilinearInBox's value (the same expressions) and the interpolant's gradient g [3] (per voxel
// unit along i, j, k) in the cell that holds the point.
FLUORO_HD float TrilinearGradientInBox(const float* vol, int nx, int ny, int nz, float x, float y,
                                       float z, float* g) {
  const TrilinearCell cell(vol, nx, ny, nz, x, y, z);
  const float* p = cell.p;
  const float fx = cell.f[0], fy = cell.f[1], fz = cell.f[2];
  const long long sy = cell.sy, sz = cell.sz;
  const float d00 = p[1] - p[0], d10 = p[sy + 1] - p[sy];
  const float d01 = p[sz + 1] - p[sz], d11 = p[sz + sy + 1] - p[sz + sy];
  const float c00 = p[0] + fx * d00;
  const float c10 = p[sy] + fx * d10;
  const float c01 = p[sz] + fx * d01;
  const float c11 = p[sz + sy] + fx * d11;
  const float c0 = c00 + fy * (c10 - c00);
  const float c1 = c01 + fy * (c11 - c01);
  const float e0 = d00 + fy * (d10 - d00), e1 = d01 + fy * (d11 - d01);
  g[0] = e0 + fz * (e1 - e0);
  g[1] = (c10 - c00) + fz * ((c11 - c01) - (c10 - c00));
  g[2] = c1 - c0;
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

// Samplers of the volume's trilinear interpolant inside the box of voxel centres: an array in
// memory (both backends); the CUDA backend also has a hardware-filtered 3D texture.
struct ArraySampler {
  const float* vol;  // [nz, ny, nx]
  int nx, ny, nz;
  FLUORO_HD float operator()(float x, float y, float z) const {
    return TrilinearInBox(vol, nx, ny, nz, x, y, z);
  }
  // The value and the gradient g [3] (per voxel unit): ConeRayIntegral's pose gradients.
  FLUORO_HD float WithGradient(float x, float y, float z, float* g) const {
    return TrilinearGradientInBox(vol, nx, ny, nz, x, y, z, g);
  }
};

// What ConeRayIntegral keeps besides the integral: nothing for the plain integral (kOn false:
// every member a no-op, the plain loop as it was), or the gradient sums of its pose gradients
// (see ConeRayIntegral): per sample m of step index u = m + 0.5 - u_ref (t = t_ref + u dt), the
// interpolant's gradient g, summed as g and u g.
template <bool kOn>
struct RayGradientSums {
  FLUORO_HD RayGradientSums(int, int) {}
  template <typename Sampler>
  FLUORO_HD float Sample(const Sampler& sample, const Vec3<float>& p, int) {
    return sample(p.x, p.y, p.z);
  }
  FLUORO_HD void Add(int, int) {}
  template <typename Sampler>
  FLUORO_HD float SampleLast(const Sampler& sample, const Vec3<float>& q, float, float) {
    return sample(q.x, q.y, q.z);
  }
  FLUORO_HD void Finish(float, float, float, float*) const {}
};

template <>
struct RayGradientSums<true> {
  float u_ref;                    // the middle of the visited samples, in step indices
  float g[kConeRun][3];           // the current run's gradients
  float g0[3] = {0.f, 0.f, 0.f};  // sum of g
  float g1[3] = {0.f, 0.f, 0.f};  // sum of u g
  float last[3] = {0.f, 0.f, 0.f};  // rem * g and rem * (t - t_ref) g of the partial last step
  float last_moment[3] = {0.f, 0.f, 0.f};
  FLUORO_HD RayGradientSums(int m_begin, int m_end)
      : u_ref(0.5f * static_cast<float>(m_begin + m_end)) {}
  template <typename Sampler>
  FLUORO_HD float Sample(const Sampler& sample, const Vec3<float>& p, int r) {
    return sample.WithGradient(p.x, p.y, p.z, g[r]);
  }
  FLUORO_HD void Add(int m, int r) {  // sample m, the run's r-th
    const float u = static_cast<float>(m) + 0.5f - u_ref;
    for (int c = 0; c < 3; ++c) {
      g0[c] += g[r][c];
      g1[c] += u * g[r][c];
    }
  }
  // The partial last step: rem long, its sample at t_last - t_ref = u_last dt.
  template <typename Sampler>
  FLUORO_HD float SampleLast(const Sampler& sample, const Vec3<float>& q, float rem,
                             float u_last_dt) {
    float gl[3];
    const float v = sample.WithGradient(q.x, q.y, q.z, gl);
    for (int c = 0; c < 3; ++c) {
      last[c] = rem * gl[c];
      last_moment[c] = rem * u_last_dt * gl[c];
    }
    return v;
  }
  // out [7] = (G0, G1, t_ref), scaled as the integral.
  FLUORO_HD void Finish(float t0, float dt, float len_mm, float* out) const {
    for (int c = 0; c < 3; ++c) {
      out[c] = (g0[c] * dt + last[c]) * len_mm;
      out[3 + c] = (g1[c] * dt * dt + last_moment[c]) * len_mm;
    }
    out[6] = t0 + u_ref * dt;
  }
};

// Line integral (dimensionless) along the ray of pixel (x, y), or of part `part` of `parts`
// consecutive runs of its samples (the parts sum to the integral; the CUDA backend splits the
// rays of small batches over several threads). With a finite s.stop_above, the march ends as
// soon as the partial integral exceeds it, and returns that partial integral.
// occupancy [bz, by, bx]: 1 where the block's trilinear support holds a non-zero voxel.
// kGradient (a sampler with WithGradient; whole rays, no stop_above): also the sums that give
// the integral's derivatives, gradient_sums [7] = (G0, G1, t_ref) with G0 = integral of g(t) dt
// and G1 = integral of (t - t_ref) g(t) dt, scaled as the integral (mm): g the interpolant's
// gradient per voxel unit at the ray point of parameter t (0 at the source, 1 at the pixel),
// t_ref the middle of the ray's visited samples (about where it meets the volume: moments about
// it do not cancel in float). A shift of the ray's voxel points by a + (t - t_ref) b changes the
// integral by G0 . a + G1 . b to first order (ConeRayPoseGradient makes pose derivatives).
template <typename Sampler, bool kGradient = false>
FLUORO_HD float ConeRayIntegral(const ConeRaySetup& s, const Sampler& sample,
                                const uint8_t* occupancy, int x, int y, int part = 0,
                                int parts = 1, float* gradient_sums = nullptr) {
  if constexpr (kGradient) {
    for (int c = 0; c < 7; ++c) gradient_sums[c] = 0.f;
  }
  if (!s.occupied) return 0.f;  // (early returns: no gradient, the sums stay 0)
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
  // The grid stays anchored at t0; only its samples near the support are visited (one spare
  // sample either side against rounding).
  float u0, u1;
  if (!ClipToBox(s.src, d, s.support_lo, s.support_hi, &u0, &u1)) return 0.f;
  int m_begin = static_cast<int>(floorf((u0 - t0) / dt - 0.5f)) - 1;
  int m_end = static_cast<int>(ceilf((u1 - t0) / dt - 0.5f)) + 2;
  if (m_begin < 0) m_begin = 0;
  if (m_end > n_full) m_end = n_full;
  if (m_end < m_begin) m_end = m_begin;
  if (parts > 1) {
    const long long len = m_end - m_begin;
    m_end = m_begin + static_cast<int>(len * (part + 1) / parts);
    m_begin = m_begin + static_cast<int>(len * part / parts);
  }
  const Vec3<float> step = dt * d;
  Vec3<float> pos = s.src + (t0 + (m_begin + 0.5f) * dt) * d;
  float acc = 0.f;
  RayGradientSums<kGradient> grad(m_begin, m_end);
  // Sums of samples below which the integral cannot exceed stop_above (up to rounding, checked
  // exactly when passed; the volume is non-negative, so partial integrals only grow).
  const float stop_acc = 0.999f * s.stop_above / (dt * len_mm);
  int m = m_begin;
  while (m < m_end) {
    // Samples lie in the box of voxel centres, so the truncations are >= 0 and a shift is
    // their division by kBlock (without the sign fix-up of a signed division).
    const int bi = IMin(static_cast<int>(pos.x) >> kBlockShift, s.bx - 1);
    const int bj = IMin(static_cast<int>(pos.y) >> kBlockShift, s.by - 1);
    const int bk = IMin(static_cast<int>(pos.z) >> kBlockShift, s.bz - 1);
    if (!occupancy[(static_cast<long long>(bk) * s.by + bj) * s.bx + bi]) {
      // Jump to the last full-step sample still inside this empty block (a small margin:
      // a sample exactly on the far face belongs to the next block), then one step on.
      const float blo[3] = {static_cast<float>(bi * kBlock), static_cast<float>(bj * kBlock),
                            static_cast<float>(bk * kBlock)};
      const float bhi[3] = {blo[0] + kBlock, blo[1] + kBlock, blo[2] + kBlock};
      float e0, e1;
      if (ClipToBox(s.src, d, blo, bhi, &e0, &e1)) {
        int m_last = static_cast<int>(floorf((e1 - t0) / dt - 0.5f - 1e-3f));
        if (m_last > m_end - 1) m_last = m_end - 1;
        if (m_last > m) {
          pos = s.src + (t0 + (m_last + 0.5f) * dt) * d;
          m = m_last;
        }
      }
      ++m;
      pos = pos + step;
      continue;
    }
    // An occupied block: the next kConeRun samples (fewer at the end) at once, their fetches
    // independent of each other (several in flight per thread: a GPU thread would otherwise
    // wait for each before asking for the next). Samples past the block are still samples of
    // the ray (those in an empty block add exactly zero), summed in order as one at a time.
    const int count = IMin(kConeRun, m_end - m);
    float v[kConeRun];
    Vec3<float> p = pos;
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
    for (int r = 0; r < kConeRun; ++r) {
      v[r] = r < count ? grad.Sample(sample, p, r) : 0.f;
      if (r < count) p = p + step;
    }
    for (int r = 0; r < count; ++r) {
      grad.Add(m + r, r);
      acc += v[r];
      if (acc > stop_acc) {  // maybe above stop_above: return the partial integral if it is
        const float partial = (acc * dt) * len_mm;
        if (partial > s.stop_above) return partial;
      }
    }
    m += count;
    pos = p;
  }
  acc *= dt;
  if (rem > 0.f && part == parts - 1) {
    const Vec3<float> q = s.src + (t0 + n_full * dt + 0.5f * rem) * d;
    // Its sample's t - t_ref in steps: n_full + 0.5 rem / dt - u_ref.
    acc += rem * grad.SampleLast(sample, q, rem, (n_full - 0.5f * (m_begin + m_end)) * dt + 0.5f * rem);
  }
  grad.Finish(t0, dt, len_mm, gradient_sums);
  return acc * len_mm;
}

// Per pose of a cone-beam render with pose gradients: what turns a ray's gradient sums
// (ConeRayIntegral<.., true>) into derivatives of its integral along the pose tangent of
// RefineOptions (a rotation w about the model origin, world axes, then a translation dt, world
// mm: world_from_model (R, tau) -> (exp(w) R, tau + dt)).
struct ConeRayPoseFrame {
  float world_from_voxel[9];   // M, row-major: the linear part of world_from_model o model_from_voxel
  float gradient_to_world[9];  // M^-T, row-major: a gradient per voxel unit -> per world mm
  float source_from_origin[3];  // S - tau, world mm
};

// Derivatives out [6] = d(integral)/d(w_x, w_y, w_z (rad), dt_x, dt_y, dt_z (mm)) of the ray of
// pixel (x, y) from its gradient sums [7]. With the model moved, a fixed world point's voxel
// coordinates change by -M^-1 (w x y + dt), y = P - tau = y_ref + (t - t_ref) (Q - S) with
// y_ref = (S - tau) + t_ref (Q - S), so with h_i = M^-T G_i: d/dw = h0 x y_ref + h1 x (Q - S),
// d/d(dt) = -h0.
FLUORO_HD void ConeRayPoseGradient(const ConeRaySetup& s, const ConeRayPoseFrame& f, int x, int y,
                                   const float* gradient_sums, float* out) {
  const Vec3<float> d = s.det + static_cast<float>(x) * s.du + static_cast<float>(y) * s.dv - s.src;
  const float* M = f.world_from_voxel;
  const float* N = f.gradient_to_world;
  const float yd[3] = {M[0] * d.x + M[1] * d.y + M[2] * d.z, M[3] * d.x + M[4] * d.y + M[5] * d.z,
                       M[6] * d.x + M[7] * d.y + M[8] * d.z};
  float h[2][3];
  for (int i = 0; i < 2; ++i) {
    const float* G = gradient_sums + 3 * i;
    for (int r = 0; r < 3; ++r) h[i][r] = N[3 * r] * G[0] + N[3 * r + 1] * G[1] + N[3 * r + 2] * G[2];
  }
  const float t_ref = gradient_sums[6];
  const float ys[3] = {f.source_from_origin[0] + t_ref * yd[0],
                       f.source_from_origin[1] + t_ref * yd[1],
                       f.source_from_origin[2] + t_ref * yd[2]};
  out[0] = h[0][1] * ys[2] - h[0][2] * ys[1] + h[1][1] * yd[2] - h[1][2] * yd[1];
  out[1] = h[0][2] * ys[0] - h[0][0] * ys[2] + h[1][2] * yd[0] - h[1][0] * yd[2];
  out[2] = h[0][0] * ys[1] - h[0][1] * ys[0] + h[1][0] * yd[1] - h[1][1] * yd[0];
  out[3] = -h[0][0];
  out[4] = -h[0][1];
  out[5] = -h[0][2];
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

// ---------------------------------------------------------------------------------------
// Shear-warp (cone beam, perspective): RenderOptions::cone_method = kShearWarp.
//
// In voxel coordinates the source is S and the ray of pixel (x, y) runs from S to its
// intensifier point P(x, y) = det + x du + y dv. The principal axis c maximises |P - S|_c at
// the image centre, with in-slice axes a, b as in InSliceAxes; all points below are written in
// (a, b, c) order. The factorisation applies when the source lies beyond the padded slab of
// slices and the padded volume box wholly between the source and the intensifier plane
// (ConeShearSetup::valid; otherwise the image is ray-marched). The intermediate image lies on
// the middle slice's plane c = mid with the image's own resolution there: pixel (p, q) is the
// point (a0 + p da, b0 + q db, mid), da and db the pixel pitch at that plane in voxels along a
// and b. The ray from S through it meets slice k at the in-slice point
//   A = S_a + (a0 + p da - S_a) h_k,   B = S_b + (b0 + q db - S_b) h_k,
//   h_k = (k - S_c) / (mid - S_c),
// a scaling about the source by h_k (the perspective counterpart of the parallel beam's
// shift), affine in p along a row. Shear: the intermediate image accumulates
// sum_k bilinear(slice k)(A, B), one sample per slice (Joseph's sum); unlike the parallel beam
// the column fractions vary along a row. Warp: the DRR samples the intermediate image where the
// pixel's ray crosses the plane c = mid and multiplies by the ray's length (mm) per slice,
// |diag(spacing) (P - S)| / |P - S|_c.
struct ConeShearSetup {
  int valid;                   // 0: the factorisation does not apply (ray-march the image)
  int axis, n_slices;          // c, voxels along c
  int slice_w, slice_h;        // padded slice size (n_a + 2, n_b + 2), as ShearWarpSetup
  Vec3<float> src, det, du, dv;  // S, P(0, 0), dP/dx, dP/dy: voxel coordinates in (a, b, c)
  float spacing[3];            // mm per voxel along a, b, c
  float mid;                   // c of the intermediate plane, (n_slices - 1) / 2
  float a0, b0;                // intermediate pixel (0, 0) on that plane, voxels
  float da, db;                // intermediate pixel pitch, voxels along a and b
  int inter_w, inter_h;        // intermediate size (0 when the volume misses the image)
};

FLUORO_HD float ShearWeight(const ConeShearSetup&) { return 1.f; }

// Slice k's sampling of the intermediate grid: intermediate pixel (p, q) samples the padded
// slice at column ga p + ea and row gb q + eb.
FLUORO_HD void ConeSliceScale(const ConeShearSetup& s, int k, float* ga, float* ea, float* gb,
                              float* eb) {
  const float h = (static_cast<float>(k) - s.src.z) / (s.mid - s.src.z);
  *ga = h * s.da;
  *gb = h * s.db;
  *ea = s.src.x + (s.a0 - s.src.x) * h + 1.f;
  *eb = s.src.y + (s.b0 - s.src.y) * h + 1.f;
}

// Perspective shear of intermediate row q over columns [p_begin, p_end) by slice k, if the
// row's rays cross the slice: add(pb, pe, r0, r1, ga, ea, fb, last_col) (see AddToRow) receives,
// for each ForEachNonZeroStretch, the columns [pb, pe) whose left taps lie in it.
template <typename Add>
FLUORO_HD_ALWAYS_INLINE void ShearSliceRow(const ConeShearSetup& s, const SliceStack& stack,
                                           int k, int q, int p_begin, int p_end, Add& add) {
  float ga, ea, gb, eb;
  ConeSliceScale(s, k, &ga, &ea, &gb, &eb);
  const float B = gb * static_cast<float>(q) + eb;  // padded row position
  if (!(B >= 0.f) || !(B < static_cast<float>(s.slice_h - 1))) return;
  const int row = static_cast<int>(B);
  const float fb = B - static_cast<float>(row);
  const long long slice_size = static_cast<long long>(s.slice_w) * s.slice_h;
  const float* r0 = stack.data + k * slice_size + static_cast<long long>(row) * s.slice_w;
  // Column p's left tap is padded column floor(ga p + ea).
  ForEachNonZeroStretch(stack, s.slice_h, k, row, [&](int lo, int hi) {
    int pb = static_cast<int>(ceilf((static_cast<float>(lo) - ea) / ga));
    int pe = static_cast<int>(ceilf((static_cast<float>(hi) - ea) / ga));
    if (pb < p_begin) pb = p_begin;
    if (pe > p_end) pe = p_end;
    if (pb < pe) add(pb, pe, r0, r0 + s.slice_w, ga, ea, fb, s.slice_w - 2);
  });
}

// The cone beam's WarpTap: scale 0 for a ray that turns away from the slices.
FLUORO_HD WarpTap WarpPixelTap(const ConeShearSetup& s, int x, int y) {
  const Vec3<float> d =
      s.det + static_cast<float>(x) * s.du + static_cast<float>(y) * s.dv - s.src;
  const float t = (s.mid - s.src.z) / d.z;
  const float ia = (s.src.x + t * d.x - s.a0) / s.da;
  const float ib = (s.src.y + t * d.y - s.b0) / s.db;
  // Selects, not an early return, so that the CPU's tap loop vectorises: a ray that turns away
  // gets a tap outside the image (its sample is 0) that converts to int safely, and scale 0.
  const bool away = !(t > 0.f) | !(fabsf(ia) < 1e7f) | !(fabsf(ib) < 1e7f);
  const float ja = away ? -2.f : ia, jb = away ? -2.f : ib;
  const float fp = floorf(ja), fq = floorf(jb);
  const float dx = d.x * s.spacing[0], dy = d.y * s.spacing[1], dz = d.z * s.spacing[2];
  const float mm_per_slice = sqrtf(dx * dx + dy * dy + dz * dz) / fabsf(d.z);
  return {static_cast<int>(fp), static_cast<int>(fq), ja - fp, jb - fq, away ? 0.f : mm_per_slice};
}

// The warp's value at a tap of the intermediate image inter of either factorisation.
template <typename Setup>
FLUORO_HD float WarpSample(const Setup& s, const float* inter, const WarpTap& t) {
  return t.scale * SampleIntermediate(inter, s.inter_w, s.inter_h, t.p, t.q, t.fa, t.fb);
}

// Warp: DRR value at output pixel (x, y) of either factorisation, zero outside the intermediate
// image and for a ray that turns away from the slices.
template <typename Setup>
FLUORO_HD float WarpPixel(const Setup& s, const float* inter, int x, int y) {
  return WarpSample(s, inter, WarpPixelTap(s, x, y));
}

}  // namespace kernels
}  // namespace fluororeg
