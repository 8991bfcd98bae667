// Poses, rotations and projections (header-only, host and device).
//
// Conventions (see DESIGN.md): radians inside code; a pose is
//   theta = (theta_x, theta_y, theta_z), extrinsic z-y-x Euler angles,
//   R = Rx(theta_x) Ry(theta_y) Rz(theta_z),  X_world = R X_model + tau.
// Image coordinates: x = column, y = row, origin at the centre of the top-left pixel.
#pragma once

#include "fluororeg/hd.h"

namespace fluororeg {

// theta [3] rad -> R [9] row-major. Templated so that ceres::Jet can flow through it.
template <typename T>
FLUORO_HD void RotationFromEulerZYX(const T* theta, T* R) {
#if !defined(__CUDA_ARCH__)
  using std::cos;
  using std::sin;
#endif
  const T cx = cos(theta[0]), sx = sin(theta[0]);
  const T cy = cos(theta[1]), sy = sin(theta[1]);
  const T cz = cos(theta[2]), sz = sin(theta[2]);
  R[0] = cy * cz;
  R[1] = -cy * sz;
  R[2] = sy;
  R[3] = cx * sz + sx * sy * cz;
  R[4] = cx * cz - sx * sy * sz;
  R[5] = -sx * cy;
  R[6] = sx * sz - cx * sy * cz;
  R[7] = sx * cz + cx * sy * sz;
  R[8] = cx * cy;
}

// pose [6] = (theta_x, theta_y, theta_z rad, tau_x, tau_y, tau_z mm) -> world_from_model.
template <typename T>
FLUORO_HD Affine3<T> AffineFromPose(const T* pose) {
  T R[9];
  RotationFromEulerZYX(pose, R);
  return {{R[0], R[1], R[2], pose[3], R[3], R[4], R[5], pose[4], R[6], R[7], R[8], pose[5]}};
}

// Inverse of a rigid transform (rotation part orthonormal).
template <typename T>
FLUORO_HD Affine3<T> InverseRigid(const Affine3<T>& a) {
  const T* m = a.m;
  Affine3<T> r;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) r.m[4 * i + j] = m[4 * j + i];
  for (int i = 0; i < 3; ++i)
    r.m[4 * i + 3] = -(r.m[4 * i] * m[3] + r.m[4 * i + 1] * m[7] + r.m[4 * i + 2] * m[11]);
  return r;
}

// a o b (apply b first).
template <typename T>
FLUORO_HD Affine3<T> Compose(const Affine3<T>& a, const Affine3<T>& b) {
  Affine3<T> r;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 4; ++j) {
      T s = (j == 3) ? a.m[4 * i + 3] : T(0);
      for (int k = 0; k < 3; ++k) s += a.m[4 * i + k] * b.m[4 * k + j];
      r.m[4 * i + j] = s;
    }
  }
  return r;
}

// One fluoroscope: point source S and a flat detector (the image intensifier plane) with
// centre D and orthonormal in-plane axes u (image +x, columns) and v (image +y, rows).
// All in world millimetres.
struct ConeView {
  double source[3];        // S, mm
  double detector_centre[3];  // D, mm (the point seen at pixel ((W-1)/2, (H-1)/2))
  double u[3];             // unit, image +x
  double v[3];             // unit, image +y
  double pitch_u, pitch_v;  // mm per pixel along u, v
  int width, height;        // pixels
};

// Where the ray from S through X meets the detector, in detector-plane millimetres relative
// to D along (u, v). Returns false when X is not in front of the source (behind it or in the
// plane through S parallel to the detector).
template <typename T>
FLUORO_HD bool ProjectToDetectorMm(const ConeView& view, const Vec3<T>& X, T* pu_mm, T* pv_mm) {
  const Vec3<T> S{T(view.source[0]), T(view.source[1]), T(view.source[2])};
  const Vec3<T> D{T(view.detector_centre[0]), T(view.detector_centre[1]),
                  T(view.detector_centre[2])};
  const Vec3<T> u{T(view.u[0]), T(view.u[1]), T(view.u[2])};
  const Vec3<T> v{T(view.v[0]), T(view.v[1]), T(view.v[2])};
  const Vec3<T> n = Cross(u, v);
  const Vec3<T> d = X - S;
  const T sd = Dot(n, D - S);  // signed source-detector distance
  const T nd = Dot(n, d);
  // In front of the source: d has a positive component toward the detector.
  if (!(nd * sd > T(0))) {
    *pu_mm = T(0);
    *pv_mm = T(0);
    return false;
  }
  const T t = sd / nd;
  const Vec3<T> P = S + t * d;
  *pu_mm = Dot(u, P - D);
  *pv_mm = Dot(v, P - D);
  return true;
}

// Pixel coordinates of a world point on a cone view. Returns false when not in front of
// the source; the in-field-of-view test is separate (InImage).
template <typename T>
FLUORO_HD bool ProjectCone(const ConeView& view, const Vec3<T>& X, T* px, T* py) {
  T a, b;
  const bool ok = ProjectToDetectorMm(view, X, &a, &b);
  *px = a / T(view.pitch_u) + T(0.5 * (view.width - 1));
  *py = b / T(view.pitch_v) + T(0.5 * (view.height - 1));
  return ok;
}

// The image covers [-0.5, W - 0.5) x [-0.5, H - 0.5) in pixel coordinates.
template <typename T>
FLUORO_HD bool InImage(T px, T py, int width, int height) {
  return px >= T(-0.5) && px < T(width - 0.5) && py >= T(-0.5) && py < T(height - 0.5);
}

// Parallel-beam camera of the artificial dataset (the paper's DRRs). Rays run along the
// camera +z axis; a camera point (Xc, Yc, Zc) maps to pixel
//   x = scale * Xc / pixel_mm + (W - 1) / 2,  y = scale * Yc / pixel_mm + (H - 1) / 2,
// with X_camera = R X_model + tau. The in-plane scale magnifies the image only; line
// integrals stay physical (mm of path times attenuation).
struct ParallelCamera {
  double pixel_mm;  // pixel size at scale 1, mm
  int width, height;
};

template <typename T>
FLUORO_HD void ProjectParallel(const ParallelCamera& cam, const Vec3<T>& Xc, T scale, T* px,
                               T* py) {
  *px = scale * Xc.x / T(cam.pixel_mm) + T(0.5 * (cam.width - 1));
  *py = scale * Xc.y / T(cam.pixel_mm) + T(0.5 * (cam.height - 1));
}

}  // namespace fluororeg
