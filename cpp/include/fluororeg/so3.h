// The rotation group SO(3): exponential and logarithm maps and the left Jacobian
// (header-only, host and device). Rotation matrices are [9] row-major; rotation vectors
// w [3] rad (axis times angle).
//
// The registration solver parametrises a rotation as an increment about a reference:
// R = exp([w]x) R0, singular only 2 pi away from R0, so it never meets gimbal lock.
#pragma once

#include "fluororeg/hd.h"

namespace fluororeg {

// M = I + a [w]x + b [w]x^2 (row-major 3x3): the shared form of the SO(3) exponential and of
// its left Jacobian.
FLUORO_HD void IdentityPlusSkewTerms(const double* w, double a, double b, double* M) {
  const double x = w[0], y = w[1], z = w[2];
  M[0] = 1.0 - b * (y * y + z * z);
  M[1] = -a * z + b * x * y;
  M[2] = a * y + b * x * z;
  M[3] = a * z + b * x * y;
  M[4] = 1.0 - b * (x * x + z * z);
  M[5] = -a * x + b * y * z;
  M[6] = -a * y + b * x * z;
  M[7] = a * x + b * y * z;
  M[8] = 1.0 - b * (x * x + y * y);
}

// exp([w]x) [9] (Rodrigues).
FLUORO_HD void ExpSO3(const double* w, double* R) {
  const double th2 = w[0] * w[0] + w[1] * w[1] + w[2] * w[2];
  const double th = sqrt(th2);
  double a, b;  // R = I + a [w]x + b [w]x^2
  if (th < 1e-6) {
    a = 1.0 - th2 / 6.0;
    b = 0.5 - th2 / 24.0;
  } else {
    a = sin(th) / th;
    b = (1.0 - cos(th)) / th2;
  }
  IdentityPlusSkewTerms(w, a, b, R);
}

// The inverse of ExpSO3 for rotation angles below pi: R [9] -> w [3] rad.
FLUORO_HD void LogSO3(const double* R, double* w) {
  double c = 0.5 * (R[0] + R[4] + R[8] - 1.0);
  c = c < -1.0 ? -1.0 : (c > 1.0 ? 1.0 : c);
  const double th = acos(c);
  const double f = th < 1e-6 ? 0.5 * (1.0 + th * th / 6.0) : 0.5 * th / sin(th);
  w[0] = f * (R[7] - R[5]);
  w[1] = f * (R[2] - R[6]);
  w[2] = f * (R[3] - R[1]);
}

// Left Jacobian of SO(3) [9]: d(exp([w + d]x) y)/dd = -[exp([w]x) y]x J_l(w).
FLUORO_HD void LeftJacobianSO3(const double* w, double* J) {
  const double th2 = w[0] * w[0] + w[1] * w[1] + w[2] * w[2];
  const double th = sqrt(th2);
  double a, b;  // J = I + a [w]x + b [w]x^2
  if (th < 1e-5) {
    a = 0.5 - th2 / 24.0;
    b = 1.0 / 6.0 - th2 / 120.0;
  } else {
    a = (1.0 - cos(th)) / th2;
    b = (th - sin(th)) / (th2 * th);
  }
  IdentityPlusSkewTerms(w, a, b, J);
}

// C = A B for row-major 3x3 matrices [9].
FLUORO_HD void MultiplyRotations(const double* A, const double* B, double* C) {
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      C[3 * i + j] = A[3 * i] * B[j] + A[3 * i + 1] * B[3 + j] + A[3 * i + 2] * B[6 + j];
}

}  // namespace fluororeg
