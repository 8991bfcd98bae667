// The polynomial distortion correction of one image-intensifier view, for points (the Python
// side: fluororeg.calibration.distortion.DistortionModel, which fits it; the NumPy reference of
// these kernels: fluororeg._reference.distortion).
//
// Coordinates are pixels (x = column, y = row, origin at the centre of the top-left pixel),
// normalised as xn = (x - cx) / scale, yn = (y - cy) / scale. The monomials xn^a yn^b with
// a + b <= order are ordered by degree d = 0 .. order and, within a degree, a = d .. 0 (terms:
// (order + 1) (order + 2) / 2). The correction U maps a distorted point p to the undistorted one:
// U(p) = p + sum_t coef[t] m_t(p), coef [terms, 2] the (x, y) displacement per monomial.
#pragma once

namespace fluororeg {

struct DistortionPolynomial {
  int order = 5;                         // 1 to kMaxDistortionOrder
  double cx = 0.0, cy = 0.0;             // normalisation centre, px
  double scale = 1.0;                    // normalisation scale, px (> 0)
  const double* coef = nullptr;          // [terms, 2] U: distorted -> undistorted
  const double* inverse_coef = nullptr;  // [terms, 2] the approximate reverse map (DistortPoints' start)
};

constexpr int kMaxDistortionOrder = 10;  // fluororeg.io.limits.MAX_POLYNOMIAL_ORDER

// The number of monomials of a polynomial of `order`.
int DistortionTerms(int order);

// out [n, 2] = U(xy [n, 2]). Throws std::invalid_argument for an order out of range, a scale
// that is not a positive finite number, a missing coefficient table or a non-finite point.
void UndistortPoints(const DistortionPolynomial& d, const double* xy, long long n, double* out);

// out [n, 2]: the distorted points whose correction is xy [n, 2] (U(out) = xy): the reverse
// polynomial (inverse_coef) as the start, then `iterations` Newton steps on U(p) - xy with U's
// analytic 2 x 2 Jacobian. Throws as UndistortPoints, and for iterations < 0.
void DistortPoints(const DistortionPolynomial& d, const double* xy, long long n, int iterations,
                   double* out);

}  // namespace fluororeg
