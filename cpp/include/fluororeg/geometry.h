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

// Rotation matrix [9] row-major -> Euler angles theta [3] rad (theta_y in [-pi/2, pi/2]); the
// inverse of RotationFromEulerZYX away from gimbal lock.
FLUORO_HD void EulerFromRotation(const double* R, double* theta) {
  const double s = R[2] < -1.0 ? -1.0 : (R[2] > 1.0 ? 1.0 : R[2]);
  theta[1] = asin(s);
  theta[0] = atan2(-R[5], R[8]);
  theta[2] = atan2(-R[1], R[0]);
}

// pose [6] (rad, mm) -> world_from_model as a 4x4 row-major matrix [16].
FLUORO_HD void PoseToMatrix(const double* pose, double* M) {
  double R[9];
  RotationFromEulerZYX(pose, R);
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) M[4 * i + j] = R[3 * i + j];
    M[4 * i + 3] = pose[3 + i];
  }
  M[12] = M[13] = M[14] = 0.0;
  M[15] = 1.0;
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

// One fluoroscope: point source S and a flat intensifier (the image intensifier plane) with
// centre D and orthonormal in-plane axes u (image +x, columns) and v (image +y, rows).
// All in world millimetres.
struct ConeView {
  double source[3];        // S, mm
  double intensifier_centre[3];  // D, mm (the point seen at pixel ((W-1)/2, (H-1)/2))
  double u[3];             // unit, image +x
  double v[3];             // unit, image +y
  double pitch_u, pitch_v;  // mm per pixel along u, v
  int width, height;        // pixels
};

// The paper's initial translation: the mean of both sources and both intensifier centres
// centre [3] mm.
FLUORO_HD void SystemCentre(const ConeView views[2], double* centre) {
  for (int i = 0; i < 3; ++i) {
    centre[i] = 0.25 * (views[0].source[i] + views[1].source[i] + views[0].intensifier_centre[i] +
                        views[1].intensifier_centre[i]);
  }
}

// A cone view's projection with its per-view constants computed once: n = u x v,
// sd = n . (D - S) (signed source-intensifier distance), a_u = u . (S - D), a_v = v . (S - D).
// With d = X - S and q = (u . d, v . d) / (n . d), the point X meets the intensifier plane at
//   (pu, pv) = (a_u, a_v) + sd q   mm along (u, v) relative to D,
// which is S + (sd / n . d) d expressed in the plane's axes. This is the one cone projection of
// the code base (ProjectToIntensifierMm, ProjectCone and the registration residual use it).
struct ConeProjector {
  double S[3], u[3], v[3], n[3];  // source, intensifier axes, normal u x v (world, mm)
  double sd;                      // n . (D - S), mm
  double a_u, a_v;                // u . (S - D), v . (S - D), mm

  FLUORO_HD explicit ConeProjector(const ConeView& view) {
    for (int i = 0; i < 3; ++i) {
      S[i] = view.source[i];
      u[i] = view.u[i];
      v[i] = view.v[i];
    }
    n[0] = u[1] * v[2] - u[2] * v[1];
    n[1] = u[2] * v[0] - u[0] * v[2];
    n[2] = u[0] * v[1] - u[1] * v[0];
    double SD[3];
    for (int i = 0; i < 3; ++i) SD[i] = S[i] - view.intensifier_centre[i];
    sd = -(n[0] * SD[0] + n[1] * SD[1] + n[2] * SD[2]);
    a_u = u[0] * SD[0] + u[1] * SD[1] + u[2] * SD[2];
    a_v = v[0] * SD[0] + v[1] * SD[1] + v[2] * SD[2];
  }

  // X world [3] mm -> (pu, pv) mm on the intensifier. Returns false (pu = pv = 0) when X is not
  // in front of the source (behind it or in the plane through S parallel to the intensifier).
  // Optionally also q = (qu, qv) and 1 / (n . d), the parts of the derivative
  //   d(pu)/dX = (sd / n . d) (u - qu n),  d(pv)/dX = (sd / n . d) (v - qv n).
  template <typename T>
  FLUORO_HD bool Project(const Vec3<T>& X, T* pu, T* pv, T* qu_out = nullptr,
                         T* qv_out = nullptr, T* inv_nd_out = nullptr) const {
    const T dx = X.x - S[0], dy = X.y - S[1], dz = X.z - S[2];
    const T nd = n[0] * dx + n[1] * dy + n[2] * dz;
    if (!(nd * sd > T(0))) {  // d must have a positive component toward the intensifier
      *pu = T(0);
      *pv = T(0);
      return false;
    }
    const T inv = T(1) / nd;
    const T qu = (u[0] * dx + u[1] * dy + u[2] * dz) * inv;
    const T qv = (v[0] * dx + v[1] * dy + v[2] * dz) * inv;
    *pu = a_u + sd * qu;
    *pv = a_v + sd * qv;
    if (qu_out != nullptr) *qu_out = qu;
    if (qv_out != nullptr) *qv_out = qv;
    if (inv_nd_out != nullptr) *inv_nd_out = inv;
    return true;
  }
};

// Where the ray from S through X meets the intensifier, in intensifier-plane millimetres relative
// to D along (u, v). Returns false when X is not in front of the source (behind it or in the
// plane through S parallel to the intensifier). See ConeProjector (precompute it for many points).
template <typename T>
FLUORO_HD bool ProjectToIntensifierMm(const ConeView& view, const Vec3<T>& X, T* pu_mm, T* pv_mm) {
  return ConeProjector(view).Project(X, pu_mm, pv_mm);
}

// Pixel coordinates of a world point on a cone view. Returns false when not in front of
// the source; the in-field-of-view test is separate (InImage).
template <typename T>
FLUORO_HD bool ProjectCone(const ConeView& view, const Vec3<T>& X, T* px, T* py) {
  T a, b;
  const bool ok = ProjectToIntensifierMm(view, X, &a, &b);
  *px = a / T(view.pitch_u) + T(0.5 * (view.width - 1));
  *py = b / T(view.pitch_v) + T(0.5 * (view.height - 1));
  return ok;
}

// Pixel (px, py) of a cone view -> intensifier-plane millimetres relative to D along (u, v):
// the inverse of ProjectCone's last step.
FLUORO_HD void PixelToIntensifierMm(const ConeView& view, double px, double py, double* u_mm,
                                    double* v_mm) {
  *u_mm = (px - 0.5 * (view.width - 1)) * view.pitch_u;
  *v_mm = (py - 0.5 * (view.height - 1)) * view.pitch_v;
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
