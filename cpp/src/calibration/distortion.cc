// Point maps of the intensifier's polynomial distortion correction (fluororeg/distortion.h).
#include "fluororeg/distortion.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace fluororeg {

namespace {

void CheckPolynomial(const DistortionPolynomial& d, bool inverse) {
  if (d.order < 1 || d.order > kMaxDistortionOrder) {
    throw std::invalid_argument("distortion order " + std::to_string(d.order) + ": expected 1 to " +
                                std::to_string(kMaxDistortionOrder));
  }
  if (!(std::isfinite(d.scale) && d.scale > 0.0) || !std::isfinite(d.cx) || !std::isfinite(d.cy)) {
    throw std::invalid_argument("distortion normalisation (centre " + std::to_string(d.cx) + ", " +
                                std::to_string(d.cy) + ", scale " + std::to_string(d.scale) +
                                "): expected a finite centre and a positive finite scale");
  }
  if (d.coef == nullptr || (inverse && d.inverse_coef == nullptr)) {
    throw std::invalid_argument("distortion coefficients missing");
  }
}

void CheckPoint(const double* p, long long i) {
  if (!std::isfinite(p[0]) || !std::isfinite(p[1])) {
    throw std::invalid_argument("point " + std::to_string(i) + " (" + std::to_string(p[0]) + ", " +
                                std::to_string(p[1]) + "): expected finite pixel coordinates");
  }
}

// The powers v^0 .. v^order [order + 1].
void Powers(double v, int order, double* out) {
  out[0] = 1.0;
  for (int k = 1; k <= order; ++k) out[k] = out[k - 1] * v;
}

// U(p) [2], and with `jacobian` [2][2] (row: output component, column: d/dx, d/dy) its
// derivatives, of the polynomial with coefficients `coef`.
void Evaluate(const DistortionPolynomial& d, const double* coef, const double* p, double* u,
              double (*jacobian)[2]) {
  const double xn = (p[0] - d.cx) / d.scale, yn = (p[1] - d.cy) / d.scale;
  double px[kMaxDistortionOrder + 1], py[kMaxDistortionOrder + 1];
  Powers(xn, d.order, px);
  Powers(yn, d.order, py);
  double sx = 0.0, sy = 0.0, dxx = 0.0, dxy = 0.0, dyx = 0.0, dyy = 0.0;
  int t = 0;
  for (int deg = 0; deg <= d.order; ++deg) {
    for (int a = deg; a >= 0; --a, ++t) {
      const int b = deg - a;
      const double m = px[a] * py[b];
      sx += coef[2 * t] * m;
      sy += coef[2 * t + 1] * m;
      if (jacobian != nullptr) {
        const double mx = a > 0 ? a * px[a - 1] * py[b] : 0.0;  // d m / d xn
        const double my = b > 0 ? b * px[a] * py[b - 1] : 0.0;  // d m / d yn
        dxx += coef[2 * t] * mx;
        dyx += coef[2 * t + 1] * mx;
        dxy += coef[2 * t] * my;
        dyy += coef[2 * t + 1] * my;
      }
    }
  }
  u[0] = p[0] + sx;
  u[1] = p[1] + sy;
  if (jacobian != nullptr) {
    jacobian[0][0] = 1.0 + dxx / d.scale;
    jacobian[0][1] = dxy / d.scale;
    jacobian[1][0] = dyx / d.scale;
    jacobian[1][1] = 1.0 + dyy / d.scale;
  }
}

}  // namespace

int DistortionTerms(int order) { return (order + 1) * (order + 2) / 2; }

void UndistortPoints(const DistortionPolynomial& d, const double* xy, long long n, double* out) {
  CheckPolynomial(d, false);
  for (long long i = 0; i < n; ++i) {
    CheckPoint(xy + 2 * i, i);
    Evaluate(d, d.coef, xy + 2 * i, out + 2 * i, nullptr);
  }
}

void DistortPoints(const DistortionPolynomial& d, const double* xy, long long n, int iterations,
                   double* out) {
  CheckPolynomial(d, true);
  if (iterations < 0) {
    throw std::invalid_argument("iterations " + std::to_string(iterations) + ": expected >= 0");
  }
  for (long long i = 0; i < n; ++i) {
    const double* q = xy + 2 * i;
    CheckPoint(q, i);
    double p[2];
    Evaluate(d, d.inverse_coef, q, p, nullptr);  // the reverse polynomial's estimate
    for (int it = 0; it < iterations; ++it) {
      double u[2], J[2][2];
      Evaluate(d, d.coef, p, u, J);
      const double r0 = u[0] - q[0], r1 = u[1] - q[1];
      const double det = J[0][0] * J[1][1] - J[0][1] * J[1][0];
      p[0] -= (J[1][1] * r0 - J[0][1] * r1) / det;
      p[1] -= (-J[1][0] * r0 + J[0][0] * r1) / det;
    }
    out[2 * i] = p[0];
    out[2 * i + 1] = p[1];
  }
}

}  // namespace fluororeg
