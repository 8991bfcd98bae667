// Host-side preparation shared by the CPU and CUDA backends, and argument validation.
#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

#include "common/format.h"
#include "fluororeg/limits.h"
#include "render_internal.h"

namespace fluororeg {

namespace {

using internal::Fmt;

}  // namespace

void ValidateVolume(const VolumeGrid& volume) {
  if (volume.data == nullptr) throw std::invalid_argument("volume data is null");
  if (volume.nx < 2 || volume.ny < 2 || volume.nz < 2) {
    throw std::invalid_argument("volume shape (nz, ny, nx) = (" + std::to_string(volume.nz) +
                                ", " + std::to_string(volume.ny) + ", " +
                                std::to_string(volume.nx) +
                                ") is too small: expected at least 2 voxels along each axis");
  }
  const int dims[3] = {volume.nx, volume.ny, volume.nz};
  const char* axis_names[3] = {"nx", "ny", "nz"};
  for (int c = 0; c < 3; ++c) {
    limits::CheckRange(dims[c], 2, limits::kMaxVolumeSide, axis_names[c], " voxels");
  }
  const size_t n_vox = limits::CheckedProduct(
      {static_cast<size_t>(volume.nx), static_cast<size_t>(volume.ny), static_cast<size_t>(volume.nz)},
      "volume");
  if (n_vox > static_cast<size_t>(limits::kMaxVolumeVoxels)) {
    throw std::invalid_argument("volume of " + std::to_string(n_vox) +
                                " voxels: expected at most " +
                                std::to_string(limits::kMaxVolumeVoxels) + " (1024^3)");
  }
  const auto& m = volume.model_from_voxel.m;
  for (int i = 0; i < 12; ++i) {
    if (!std::isfinite(m[i])) {
      throw std::invalid_argument("model_from_voxel holds a non-finite value " + Fmt(m[i]));
    }
  }
  // Columns must be orthogonal with positive length (rotation times diag(spacing)).
  double len[3];
  for (int c = 0; c < 3; ++c) {
    const Vec3<double> a = volume.model_from_voxel.Column(c);
    len[c] = std::sqrt(Dot(a, a));
    if (!(len[c] > 0)) {
      throw std::invalid_argument("model_from_voxel column " + std::to_string(c) +
                                  " has zero length: expected a positive voxel spacing");
    }
  }
  for (int c = 0; c < 3; ++c) {
    const int d = (c + 1) % 3;
    const double cosang =
        Dot(volume.model_from_voxel.Column(c), volume.model_from_voxel.Column(d)) /
        (len[c] * len[d]);
    if (std::fabs(cosang) > 1e-4) {
      throw std::invalid_argument("model_from_voxel columns " + std::to_string(c) + " and " +
                                  std::to_string(d) + " are not orthogonal (cosine " +
                                  Fmt(cosang) + "): expected an orthonormal direction matrix");
    }
  }
}

void ValidateParallelCamera(const ParallelCamera& camera) {
  if (camera.width <= 0 || camera.height <= 0 || camera.width > limits::kMaxImageSide ||
      camera.height > limits::kMaxImageSide) {
    throw std::invalid_argument("image size " + std::to_string(camera.width) + " x " +
                                std::to_string(camera.height) + ": expected 1 to " +
                                std::to_string(limits::kMaxImageSide) + " pixels per side");
  }
  if (!(camera.pixel_mm > 0) || !std::isfinite(camera.pixel_mm)) {
    throw std::invalid_argument("pixel size " + Fmt(camera.pixel_mm) +
                                " mm must be finite and positive");
  }
}

void ValidateConeView(const ConeView& view, int index) {
  const std::string where = "view " + std::to_string(index) + ": ";
  if (view.width <= 0 || view.height <= 0 || view.width > limits::kMaxImageSide ||
      view.height > limits::kMaxImageSide) {
    throw std::invalid_argument(where + "image size " + std::to_string(view.width) + " x " +
                                std::to_string(view.height) + ": expected 1 to " +
                                std::to_string(limits::kMaxImageSide) + " pixels per side");
  }
  if (!(view.pitch_u > 0) || !(view.pitch_v > 0) || !std::isfinite(view.pitch_u) ||
      !std::isfinite(view.pitch_v)) {
    throw std::invalid_argument(where + "pixel pitch (" + Fmt(view.pitch_u) + ", " +
                                Fmt(view.pitch_v) + ") mm must be finite and positive");
  }
  for (int i = 0; i < 3; ++i) {
    for (double x : {view.source[i], view.intensifier_centre[i], view.u[i], view.v[i]}) {
      if (!std::isfinite(x)) throw std::invalid_argument(where + "non-finite value " + Fmt(x));
    }
  }
  const Vec3<double> u{view.u[0], view.u[1], view.u[2]}, v{view.v[0], view.v[1], view.v[2]};
  if (std::fabs(Dot(u, u) - 1) > 1e-6 || std::fabs(Dot(v, v) - 1) > 1e-6 ||
      std::fabs(Dot(u, v)) > 1e-6) {
    throw std::invalid_argument(where + "intensifier axes u and v must be orthonormal (|u|^2 = " +
                                Fmt(Dot(u, u)) + ", |v|^2 = " + Fmt(Dot(v, v)) +
                                ", u.v = " + Fmt(Dot(u, v)) + ")");
  }
  const Vec3<double> S{view.source[0], view.source[1], view.source[2]};
  const Vec3<double> D{view.intensifier_centre[0], view.intensifier_centre[1],
                       view.intensifier_centre[2]};
  const double sdd = Dot(Cross(u, v), D - S);
  if (std::fabs(sdd) < 1e-6) {
    throw std::invalid_argument(where + "the source lies on the intensifier plane (distance " +
                                Fmt(sdd) + " mm): expected a positive source-intensifier distance");
  }
}

void ValidatePoses(const double* poses, int n) {
  limits::CheckRange(n, 0, limits::kMaxBatch, "pose count");
  if (n > 0 && poses == nullptr) throw std::invalid_argument("poses is null");
  for (int i = 0; i < 6 * n; ++i) {
    if (!std::isfinite(poses[i])) {
      throw std::invalid_argument("pose " + std::to_string(i / 6) + " holds a non-finite value " +
                                  Fmt(poses[i]));
    }
  }
}

namespace internal {

Affine3<double> InvertAffine(const Affine3<double>& a) {
  const double* m = a.m;
  // Cofactor inverse of the 3x3 part.
  const double c00 = m[5] * m[10] - m[6] * m[9];
  const double c01 = m[6] * m[8] - m[4] * m[10];
  const double c02 = m[4] * m[9] - m[5] * m[8];
  const double det = m[0] * c00 + m[1] * c01 + m[2] * c02;
  if (!(std::fabs(det) > 1e-300)) throw std::invalid_argument("affine transform is singular");
  const double inv_det = 1.0 / det;
  Affine3<double> r;
  double* o = r.m;
  o[0] = c00 * inv_det;
  o[1] = (m[2] * m[9] - m[1] * m[10]) * inv_det;
  o[2] = (m[1] * m[6] - m[2] * m[5]) * inv_det;
  o[4] = c01 * inv_det;
  o[5] = (m[0] * m[10] - m[2] * m[8]) * inv_det;
  o[6] = (m[2] * m[4] - m[0] * m[6]) * inv_det;
  o[8] = c02 * inv_det;
  o[9] = (m[1] * m[8] - m[0] * m[9]) * inv_det;
  o[10] = (m[0] * m[5] - m[1] * m[4]) * inv_det;
  for (int i = 0; i < 3; ++i) {
    o[4 * i + 3] = -(o[4 * i] * m[3] + o[4 * i + 1] * m[7] + o[4 * i + 2] * m[11]);
  }
  return r;
}

// The principal axis c of a shear-warp setup (either factorisation): the voxel axis along
// which the ray direction d [3] (voxel coordinates) is longest; sets the setup's slice fields
// and the in-slice axes *a, *b.
template <typename Setup>
int ChooseSliceAxis(const VolumeGrid& volume, const double d[3], Setup* s, int* a, int* b) {
  int c = 0;
  for (int r = 1; r < 3; ++r)
    if (std::fabs(d[r]) > std::fabs(d[c])) c = r;
  kernels::InSliceAxes(c, a, b);
  const int dims[3] = {volume.nx, volume.ny, volume.nz};
  s->axis = c;
  s->n_slices = dims[c];
  s->slice_w = dims[*a] + 2;
  s->slice_h = dims[*b] + 2;
  return c;
}

kernels::ShearWarpSetup MakeShearWarpSetup(const VolumeGrid& volume, const ParallelCamera& camera,
                                           const double* pose, double scale) {
  const Affine3<double> voxel_from_camera =
      Compose(InvertAffine(volume.model_from_voxel), InverseRigid(AffineFromPose(pose)));
  const double k = camera.pixel_mm / scale;  // camera mm per pixel
  const double cx = 0.5 * (camera.width - 1), cy = 0.5 * (camera.height - 1);
  // v0(x, y) = gx * x + gy * y + h (voxel coordinates at camera z = 0); dv per mm along z.
  double gx[3], gy[3], h[3], dv[3];
  for (int r = 0; r < 3; ++r) {
    const double* row = voxel_from_camera.m + 4 * r;
    gx[r] = row[0] * k;
    gy[r] = row[1] * k;
    h[r] = row[3] - gx[r] * cx - gy[r] * cy;
    dv[r] = row[2];
  }
  kernels::ShearWarpSetup s{};
  int a, b;
  const int c = ChooseSliceAxis(volume, dv, &s, &a, &b);
  const int dims[3] = {volume.nx, volume.ny, volume.nz};
  s.sa = dv[a] / dv[c];
  s.sb = dv[b] / dv[c];
  s.weight = 1.0 / std::fabs(dv[c]);
  s.wa[0] = gx[a] - s.sa * gx[c];
  s.wa[1] = gy[a] - s.sa * gy[c];
  s.wa[2] = h[a] - s.sa * h[c];
  s.wb[0] = gx[b] - s.sb * gx[c];
  s.wb[1] = gy[b] - s.sb * gy[c];
  s.wb[2] = h[b] - s.sb * h[c];
  // Extent of the base plane that both the image (with a one-pixel margin) and the sheared
  // slices cover.
  auto extent = [&](const double* w, double shear, int n_in, int* origin, int* size) {
    double lo = 1e300, hi = -1e300;
    for (double x : {-1.0, static_cast<double>(camera.width)}) {
      for (double y : {-1.0, static_cast<double>(camera.height)}) {
        const double v = w[0] * x + w[1] * y + w[2];
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
    const double last = (s.n_slices - 1) * shear;
    lo = std::max(lo, -1.0 - std::max(0.0, last));
    hi = std::min(hi, n_in - std::min(0.0, last));
    if (!(hi >= lo)) {
      *origin = 0;
      *size = 0;
      return;
    }
    *origin = static_cast<int>(std::floor(lo));
    *size = static_cast<int>(std::floor(hi)) - *origin + 2;
  };
  extent(s.wa, s.sa, dims[a], &s.a0, &s.inter_w);
  extent(s.wb, s.sb, dims[b], &s.b0, &s.inter_h);
  if (s.inter_w == 0 || s.inter_h == 0) s.inter_w = s.inter_h = 0;
  return s;
}

void RowPairStretches(const int32_t* a, const int32_t* a_end, const int32_t* b,
                      const int32_t* b_end, std::vector<int32_t>* out) {
  while (a < a_end || b < b_end) {
    const int32_t** next = (b == b_end || (a < a_end && a[0] <= b[0])) ? &a : &b;
    const int lo = (*next)[0] - 1;
    int hi = (*next)[1] + 1;
    *next += 2;
    for (;;) {  // join the runs whose stretches meet this one or lie close
      if (a < a_end && a[0] - 1 < hi + kernels::kMinSkippedGap) {
        hi = std::max(hi, a[1] + 1);
        a += 2;
      } else if (b < b_end && b[0] - 1 < hi + kernels::kMinSkippedGap) {
        hi = std::max(hi, b[1] + 1);
        b += 2;
      } else {
        break;
      }
    }
    out->push_back(lo);
    out->push_back(hi);
  }
}

PaddedSlices MakePaddedSlices(const VolumeGrid& volume, int axis) {
  int a, b;
  kernels::InSliceAxes(axis, &a, &b);
  const int dims[3] = {volume.nx, volume.ny, volume.nz};
  const long long stride[3] = {1, volume.nx, static_cast<long long>(volume.nx) * volume.ny};
  PaddedSlices p;
  p.axis = axis;
  p.n_slices = dims[axis];
  p.slice_w = dims[a] + 2;
  p.slice_h = dims[b] + 2;
  const long long slice_size = static_cast<long long>(p.slice_w) * p.slice_h;
  p.data.assign(limits::CheckedMul(slice_size, p.n_slices, "padded slices"), 0.f);
  p.stretch_offset.assign(static_cast<size_t>(p.slice_h) * p.n_slices + 1, 0);
  p.stretches.clear();
  // Runs [first, last] of non-zero voxels of each padded row of one slice (padded columns);
  // row_start[r] .. row_start[r + 1] for padded row r (rows 0 and slice_h - 1 have none).
  std::vector<int32_t> runs;
  std::vector<size_t> row_start(p.slice_h + 1, 0);
  for (int k = 0; k < p.n_slices; ++k) {
    float* slice = p.data.data() + k * slice_size;
    runs.clear();
    for (int ib = 0; ib < dims[b]; ++ib) {
      row_start[ib + 1] = runs.size() / 2;
      float* row = slice + static_cast<long long>(ib + 1) * p.slice_w + 1;
      const float* src = volume.data + k * stride[axis] + ib * stride[b];
      int last = -1;  // padded column of the last non-zero voxel so far
      for (int ia = 0; ia < dims[a]; ++ia) {
        const float val = src[ia * stride[a]];
        row[ia] = val;
        if (val != 0.f) {
          if (last != ia) {  // a new run at padded column ia + 1
            runs.push_back(ia + 1);
            runs.push_back(ia + 1);
          }
          runs.back() = ia + 1;
          last = ia + 1;
        }
      }
    }
    row_start[dims[b] + 1] = row_start[p.slice_h] = runs.size() / 2;
    for (int r = 0; r < p.slice_h; ++r) {
      const size_t i = static_cast<size_t>(k) * p.slice_h + r;
      p.stretch_offset[i] = static_cast<int64_t>(p.stretches.size() / 2);
      if (r + 1 < p.slice_h) {
        RowPairStretches(runs.data() + 2 * row_start[r], runs.data() + 2 * row_start[r + 1],
                         runs.data() + 2 * row_start[r + 1], runs.data() + 2 * row_start[r + 2],
                         &p.stretches);
      }
    }
  }
  p.stretch_offset.back() = static_cast<int64_t>(p.stretches.size() / 2);
  return p;
}

namespace {

// A cone view in a volume's voxel coordinates at a pose (world_from_model): the source, the
// intensifier point of pixel (0, 0) and the steps of one pixel along x and y.
struct ViewInVoxels {
  Vec3<double> source, pixel00, du, dv;
};

ViewInVoxels ConeViewInVoxels(const VolumeGrid& volume, const ConeView& view,
                              const double* pose) {
  const Affine3<double> voxel_from_world =
      Compose(InvertAffine(volume.model_from_voxel), InverseRigid(AffineFromPose(pose)));
  const Vec3<double> S{view.source[0], view.source[1], view.source[2]};
  const Vec3<double> u{view.u[0], view.u[1], view.u[2]}, v{view.v[0], view.v[1], view.v[2]};
  const Vec3<double> D{view.intensifier_centre[0], view.intensifier_centre[1],
                       view.intensifier_centre[2]};
  const Vec3<double> P00 = D - (0.5 * (view.width - 1) * view.pitch_u) * u -
                           (0.5 * (view.height - 1) * view.pitch_v) * v;
  return {voxel_from_world.Apply(S), voxel_from_world.Apply(P00),
          voxel_from_world.ApplyLinear(view.pitch_u * u),
          voxel_from_world.ApplyLinear(view.pitch_v * v)};
}

}  // namespace

kernels::ConeRaySetup MakeConeRaySetup(const RenderVolume::State& state, const ConeView& view,
                                       const double* pose, double step_voxels) {
  const VolumeGrid& volume = state.grid;
  const ViewInVoxels w = ConeViewInVoxels(volume, view, pose);
  auto to_float = [](const Vec3<double>& p) {
    return Vec3<float>{static_cast<float>(p.x), static_cast<float>(p.y),
                       static_cast<float>(p.z)};
  };
  kernels::ConeRaySetup s{};
  s.src = to_float(w.source);
  s.det = to_float(w.pixel00);
  s.du = to_float(w.du);
  s.dv = to_float(w.dv);
  for (int c = 0; c < 3; ++c) {
    const Vec3<double> col = volume.model_from_voxel.Column(c);
    s.spacing[c] = static_cast<float>(std::sqrt(Dot(col, col)));
    s.support_lo[c] = state.support_lo[c];
    s.support_hi[c] = state.support_hi[c];
  }
  s.step_voxels = static_cast<float>(step_voxels);
  s.stop_above = std::numeric_limits<float>::infinity();
  s.nx = volume.nx;
  s.ny = volume.ny;
  s.nz = volume.nz;
  s.bx = state.bx;
  s.by = state.by;
  s.bz = state.bz;
  s.occupied = state.occupied ? 1 : 0;
  return s;
}

kernels::ConeRayPoseFrame MakeConeRayPoseFrame(const VolumeGrid& volume, const ConeView& view,
                                               const double* pose) {
  const Affine3<double> world_from_voxel = Compose(AffineFromPose(pose), volume.model_from_voxel);
  const Affine3<double> voxel_from_world = InvertAffine(world_from_voxel);
  kernels::ConeRayPoseFrame f{};
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      f.world_from_voxel[3 * i + j] = static_cast<float>(world_from_voxel.m[4 * i + j]);
      f.gradient_to_world[3 * i + j] = static_cast<float>(voxel_from_world.m[4 * j + i]);
    }
    f.source_from_origin[i] = static_cast<float>(view.source[i] - pose[3 + i]);
  }
  return f;
}

kernels::ConeShearSetup MakeConeShearSetup(const VolumeGrid& volume, const ConeView& view,
                                           const double* pose) {
  const ViewInVoxels w = ConeViewInVoxels(volume, view, pose);
  const Vec3<double>& S = w.source;
  const Vec3<double>& P00 = w.pixel00;
  const Vec3<double>& du = w.du;
  const Vec3<double>& dv = w.dv;
  auto pixel = [&](double x, double y) { return P00 + x * du + y * dv; };
  auto at = [](const Vec3<double>& p, int axis) { return axis == 0 ? p.x : axis == 1 ? p.y : p.z; };
  const Vec3<double> d0 = pixel((view.width - 1) / 2, (view.height - 1) / 2) - S;
  const double central_ray[3] = {d0.x, d0.y, d0.z};
  kernels::ConeShearSetup s{};
  int a, b;
  const int c = ChooseSliceAxis(volume, central_ray, &s, &a, &b);
  const int dims[3] = {volume.nx, volume.ny, volume.nz};
  // The factorisation needs the source beyond the padded slab [-1, n_c] along c (every slice
  // in front of it) and the padded volume box wholly on the source's side of the intensifier
  // plane (every ray's segment crosses all of the box).
  const double mid = 0.5 * (dims[c] - 1), half = 0.5 * (dims[c] + 1);
  const double side = mid > at(S, c) ? 1.0 : mid < at(S, c) ? -1.0 : 0.0;
  const Vec3<double> normal = Cross(du, dv);
  const double source_side = Dot(normal, S - P00);
  bool valid = side != 0 && side * (mid - at(S, c)) >= half && source_side != 0;
  for (int corner = 0; corner < 8; ++corner) {
    const Vec3<double> X{corner & 1 ? volume.nx : -1.0, corner & 2 ? volume.ny : -1.0,
                         corner & 4 ? volume.nz : -1.0};
    valid = valid && Dot(normal, X - P00) * source_side > 0;
  }
  if (!valid) return s;  // s.valid = 0
  // The image's corners with a one-pixel margin.
  const Vec3<double> corners[4] = {pixel(-1, -1), pixel(-1, view.height), pixel(view.width, -1),
                                   pixel(view.width, view.height)};
  s.valid = 1;
  auto to_abc = [&](const Vec3<double>& p) {
    return Vec3<float>{static_cast<float>(at(p, a)), static_cast<float>(at(p, b)),
                       static_cast<float>(at(p, c))};
  };
  s.src = to_abc(S);
  s.det = to_abc(P00);
  s.du = to_abc(du);
  s.dv = to_abc(dv);
  const int abc[3] = {a, b, c};
  for (int r = 0; r < 3; ++r) {
    const Vec3<double> col = volume.model_from_voxel.Column(abc[r]);
    s.spacing[r] = static_cast<float>(std::sqrt(Dot(col, col)));
  }
  s.mid = static_cast<float>(mid);
  // The intermediate grid on the plane c = mid: the image's footprint there (its pixel pitch,
  // the shorter of the two pixel steps at the image centre in mm, and its corners with a
  // one-pixel margin, unless a corner's ray turns away from the plane), cut to the slices'
  // footprint (the padded boxes of the first and last slice scaled about the source), with one
  // intermediate pixel to spare on either side.
  auto foot = [&](const Vec3<double>& p, int axis) {
    return at(S, axis) + (mid - at(S, c)) / (at(p, c) - at(S, c)) * (at(p, axis) - at(S, axis));
  };
  const double cx = 0.5 * (view.width - 1), cy = 0.5 * (view.height - 1);
  const Vec3<double> centre = pixel(cx, cy), right = pixel(cx + 1, cy), down = pixel(cx, cy + 1);
  const double sa = s.spacing[0], sb = s.spacing[1];
  const double step_x = std::hypot((foot(right, a) - foot(centre, a)) * sa,
                                   (foot(right, b) - foot(centre, b)) * sb);
  const double step_y = std::hypot((foot(down, a) - foot(centre, a)) * sa,
                                   (foot(down, b) - foot(centre, b)) * sb);
  const double pitch_mm = std::min(step_x, step_y);
  const double h_first = (0 - at(S, c)) / (mid - at(S, c));
  const double h_last = (dims[c] - 1 - at(S, c)) / (mid - at(S, c));
  bool corners_meet_plane = true;
  for (const Vec3<double>& corner : corners) {
    corners_meet_plane = corners_meet_plane && side * (at(corner, c) - at(S, c)) > 0;
  }
  auto extent = [&](int axis, int n_in, double pitch, float* origin, int* size) {
    double lo = -1e300, hi = 1e300;
    if (corners_meet_plane) {
      lo = 1e300;
      hi = -1e300;
      for (const Vec3<double>& corner : corners) {
        lo = std::min(lo, foot(corner, axis));
        hi = std::max(hi, foot(corner, axis));
      }
    }
    double slo = 1e300, shi = -1e300;
    for (double e : {-1.0, static_cast<double>(n_in)}) {
      for (double h : {h_first, h_last}) {
        const double f = at(S, axis) + (e - at(S, axis)) / h;
        slo = std::min(slo, f);
        shi = std::max(shi, f);
      }
    }
    lo = std::max(lo, slo);
    hi = std::min(hi, shi);
    if (!(hi >= lo) || !(pitch > 0)) {
      *origin = 0;
      *size = 0;
      return;
    }
    *origin = static_cast<float>(lo - pitch);
    *size = static_cast<int>(std::floor((hi - *origin) / pitch)) + 2;
  };
  s.da = static_cast<float>(pitch_mm / sa);
  s.db = static_cast<float>(pitch_mm / sb);
  extent(a, dims[a], s.da, &s.a0, &s.inter_w);
  extent(b, dims[b], s.db, &s.b0, &s.inter_h);
  if (s.inter_w == 0 || s.inter_h == 0) s.inter_w = s.inter_h = 0;
  return s;
}

void RequireCuda() {
#if defined(FLUORO_WITH_CUDA)
  if (CudaDeviceCount() > 0) return;
  throw std::runtime_error(
      "device='cuda' was requested but no CUDA device is usable on this machine; use "
      "device='cpu'");
#else
  throw std::runtime_error(
      "device='cuda' was requested but fluororeg was built without CUDA (FLUORO_CUDA=OFF or no "
      "nvcc at build time); rebuild with CUDA or use device='cpu'");
#endif
}

}  // namespace internal

bool CudaBuilt() {
#if defined(FLUORO_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

bool CudaAvailable() {
#if defined(FLUORO_WITH_CUDA)
  return internal::CudaDeviceCount() > 0;
#else
  return false;
#endif
}

// ---------------------------------------------------------------------------------------
// RenderVolume

RenderVolume::State::State(const VolumeGrid& volume, bool copy) : grid(volume) {
  ValidateVolume(volume);
  const size_t n_vox = limits::CheckedProduct(
      {static_cast<size_t>(volume.nx), static_cast<size_t>(volume.ny), static_cast<size_t>(volume.nz)},
      "volume");
  if (copy) {
    voxels.assign(volume.data, volume.data + n_vox);
    grid.data = voxels.data();
  }
}

void RenderVolume::State::PrepareCone() {
  std::call_once(cone_once, [&] { BuildOccupancy(); });
}

void RenderVolume::State::BuildOccupancy() {
  const VolumeGrid& volume = grid;
  // Block occupancy: a sample in block (bi, bj, bk) reads voxels [b*B, b*B + B] along each
  // axis (clamped), so a non-zero voxel at index i marks the blocks i / B and (i - 1) / B.
  constexpr int B = kernels::kBlock;
  bx = std::max((volume.nx - 1 + B - 1) / B, 1);
  by = std::max((volume.ny - 1 + B - 1) / B, 1);
  bz = std::max((volume.nz - 1 + B - 1) / B, 1);
  occupancy.assign(limits::CheckedProduct({static_cast<size_t>(bx), static_cast<size_t>(by),
                                           static_cast<size_t>(bz)}, "occupancy"), 0);
  int lo[3] = {volume.nx, volume.ny, volume.nz}, hi[3] = {-1, -1, -1};
  for (int k = 0; k < volume.nz; ++k) {
    for (int j = 0; j < volume.ny; ++j) {
      const float* row = grid.data + (static_cast<long long>(k) * volume.ny + j) * volume.nx;
      for (int i = 0; i < volume.nx; ++i) {
        if (row[i] == 0.f) continue;
        lo[0] = std::min(lo[0], i);
        hi[0] = std::max(hi[0], i);
        lo[1] = std::min(lo[1], j);
        hi[1] = std::max(hi[1], j);
        lo[2] = std::min(lo[2], k);
        hi[2] = std::max(hi[2], k);
        for (int kk : {k / B, (k - 1) / B}) {
          if (kk < 0 || kk >= bz) continue;
          for (int jj : {j / B, (j - 1) / B}) {
            if (jj < 0 || jj >= by) continue;
            const size_t base = (static_cast<size_t>(kk) * by + jj) * bx;
            if (i / B < bx) occupancy[base + i / B] = 1;
            if (i > 0 && (i - 1) / B < bx) occupancy[base + (i - 1) / B] = 1;
          }
        }
      }
    }
  }
  occupied = hi[0] >= 0;
  const int dims[3] = {volume.nx, volume.ny, volume.nz};
  for (int c = 0; c < 3 && occupied; ++c) {
    // The interpolant at x is non-zero only if a corner floor(x) or floor(x) + 1 is.
    support_lo[c] = static_cast<float>(std::max(lo[c] - 1, 0));
    support_hi[c] = static_cast<float>(std::min(hi[c] + 1, dims[c] - 1));
  }
}

RenderVolume::State::~State() {
#if defined(FLUORO_WITH_CUDA)
  internal::DestroyCudaVolume(cuda);
#endif
}

const internal::PaddedSlices& RenderVolume::State::Slices(int axis) {
  std::call_once(slices_once[axis], [&] { slices[axis] = internal::MakePaddedSlices(grid, axis); });
  return slices[axis];
}

RenderVolume::RenderVolume(const VolumeGrid& volume, Device device)
    : state_(std::make_unique<State>(volume, true)) {
  state_->device = device;
  if (device == Device::kCuda) {
    internal::RequireCuda();
#if defined(FLUORO_WITH_CUDA)
    std::lock_guard<std::mutex> lock(state_->cuda_mutex);
    internal::GetCudaVolume(*state_);
#endif
  }
}

RenderVolume RenderVolume::View(const VolumeGrid& volume) {
  RenderVolume r;
  r.state_ = std::make_unique<State>(volume, false);
  return r;
}

RenderVolume::~RenderVolume() = default;
RenderVolume::RenderVolume(RenderVolume&&) noexcept = default;
RenderVolume& RenderVolume::operator=(RenderVolume&&) noexcept = default;

const VolumeGrid& RenderVolume::grid() const { return state_->grid; }
Device RenderVolume::device() const { return state_->device; }

size_t RenderVolume::HostBytes() const {
  size_t bytes = state_->voxels.size() * sizeof(float) + state_->occupancy.size();
  for (const auto& p : state_->slices) {
    bytes += p.data.size() * sizeof(float) + p.stretch_offset.size() * sizeof(int64_t) +
             p.stretches.size() * sizeof(int32_t);
  }
  return bytes;
}

size_t RenderVolume::DeviceBytes() const {
#if defined(FLUORO_WITH_CUDA)
  std::lock_guard<std::mutex> lock(state_->cuda_mutex);
  return internal::CudaVolumeBytes(state_->cuda);
#else
  return 0;
#endif
}

double RenderVolume::LastCudaKernelMs() const {
  std::lock_guard<std::mutex> lock(state_->cuda_mutex);
  return state_->last_kernel_ms;
}

std::shared_ptr<float> CudaAllocateFloats(size_t count) {
  internal::RequireCuda();
#if defined(FLUORO_WITH_CUDA)
  return std::shared_ptr<float>(internal::CudaMallocFloats(count), internal::CudaFreeFloats);
#else
  (void)count;
  return nullptr;
#endif
}

std::shared_ptr<float> AllocateHostImages(Device device, size_t count) {
  const size_t n = std::max<size_t>(count, 1);
#if defined(FLUORO_WITH_CUDA)
  if (device == Device::kCuda) {
    if (std::shared_ptr<float> p = internal::CudaPageLockedFloats(n)) return p;
  }
#else
  (void)device;
#endif
  return std::shared_ptr<float>(new float[n], std::default_delete<float[]>());
}

void ConePixelsAtObject(const ConeView* views, const double* poses, int n, double* out) {
  for (int i = 0; i < n; ++i) {
    const ConeView& v = views[i];
    const double nrm[3] = {v.u[1] * v.v[2] - v.u[2] * v.v[1], v.u[2] * v.v[0] - v.u[0] * v.v[2],
                           v.u[0] * v.v[1] - v.u[1] * v.v[0]};  // u x v
    double sdd = 0, sod = 0;
    for (int a = 0; a < 3; ++a) {
      sdd += nrm[a] * (v.intensifier_centre[a] - v.source[a]);
      sod += nrm[a] * (poses[6 * i + 3 + a] - v.source[a]);
    }
    const double pitch = std::min(v.pitch_u, v.pitch_v);
    out[i] = pitch * std::max(std::fabs(sod), 1e-6) / std::fabs(sdd);
  }
}

}  // namespace fluororeg
