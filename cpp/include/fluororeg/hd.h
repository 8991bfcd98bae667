// Host/device portability for the per-ray and per-point math shared by the CPU and CUDA
// backends. Code marked FLUORO_HD is compiled by the host compiler for the CPU backend and
// by nvcc (as __host__ __device__) for the CUDA kernels, so each formula exists once.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define FLUORO_HD __host__ __device__ __forceinline__
#define FLUORO_HD_ALWAYS_INLINE __host__ __device__ __forceinline__
#else
#define FLUORO_HD inline
// For bodies too large for the host compiler to inline of itself that must run inside the CPU
// launchers' AVX2 clones (common/cpu_clones.h).
#define FLUORO_HD_ALWAYS_INLINE inline __attribute__((always_inline))
#endif

namespace fluororeg {

// Plain 3-vector usable in kernels (Eigen is kept out of device code on purpose).
template <typename T>
struct Vec3 {
  T x, y, z;
};

template <typename T>
FLUORO_HD Vec3<T> operator+(const Vec3<T>& a, const Vec3<T>& b) {
  return {a.x + b.x, a.y + b.y, a.z + b.z};
}
template <typename T>
FLUORO_HD Vec3<T> operator-(const Vec3<T>& a, const Vec3<T>& b) {
  return {a.x - b.x, a.y - b.y, a.z - b.z};
}
template <typename T, typename S>
FLUORO_HD Vec3<T> operator*(const S s, const Vec3<T>& a) {
  return {T(s) * a.x, T(s) * a.y, T(s) * a.z};
}
template <typename T>
FLUORO_HD T Dot(const Vec3<T>& a, const Vec3<T>& b) {
  return a.x * b.x + a.y * b.y + a.z * b.z;
}
template <typename T>
FLUORO_HD Vec3<T> Cross(const Vec3<T>& a, const Vec3<T>& b) {
  return {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}

// Row-major 3x4 affine transform y = A[:, :3] x + A[:, 3].
template <typename T>
struct Affine3 {
  T m[12];
  FLUORO_HD Vec3<T> Apply(const Vec3<T>& p) const {
    return {m[0] * p.x + m[1] * p.y + m[2] * p.z + m[3],
            m[4] * p.x + m[5] * p.y + m[6] * p.z + m[7],
            m[8] * p.x + m[9] * p.y + m[10] * p.z + m[11]};
  }
  FLUORO_HD Vec3<T> ApplyLinear(const Vec3<T>& d) const {
    return {m[0] * d.x + m[1] * d.y + m[2] * d.z, m[4] * d.x + m[5] * d.y + m[6] * d.z,
            m[8] * d.x + m[9] * d.y + m[10] * d.z};
  }
  FLUORO_HD Vec3<T> Column(int c) const { return {m[c], m[4 + c], m[8 + c]}; }
};

}  // namespace fluororeg
