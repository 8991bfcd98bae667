// DRRs to 8-bit pictures (see picture.h).
#include "fluororeg/picture.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/cpu_clones.h"
#include "fluororeg/parallel.h"

namespace fluororeg {

double LinearPercentile(float* values, long long m, double q) {
  if (m < 1) throw std::invalid_argument("a percentile needs at least one value");
  const double index = static_cast<double>(m - 1) * (q / 100.0);
  const long long lo = std::min(static_cast<long long>(std::floor(index)), m - 1);
  const double t = index - static_cast<double>(lo);
  std::nth_element(values, values + lo, values + m);
  const double a = values[lo];
  if (lo + 1 >= m || t == 0.0) return a;
  const double b = *std::min_element(values + lo + 1, values + m);  // the next order statistic
  return a + (b - a) * t;
}

namespace {

// out [pixels] = round-half-even(255 * clip(v / hi, 0, 1)) of img (0 where keep is 0). Adding
// and subtracting 2^23 rounds a float in [0, 255] to the nearest integer, ties to even, as
// np.round does, without a library call.
FLUORO_CPU_CLONES void WindowImage(const float* img, const uint8_t* keep, long long pixels,
                                   float hi, uint8_t* out) {
  constexpr float kRound = 8388608.f;  // 2^23
  for (long long j = 0; j < pixels; ++j) {
    const float v = (keep == nullptr || keep[j]) ? img[j] : 0.f;
    const float s = std::min(std::max(v / hi, 0.f), 1.f) * 255.f;
    out[j] = static_cast<uint8_t>((s + kRound) - kRound);
  }
}

}  // namespace

void WindowToUint8(const float* images, const uint8_t* keep, long long n, long long pixels,
                   double percentile, int num_threads, float* window_hi, uint8_t* out) {
  if (!(percentile > 0.0 && percentile <= 100.0)) {
    throw std::invalid_argument("percentile " + std::to_string(percentile) +
                                " must lie in (0, 100]");
  }
  if (n < 0 || pixels < 0) throw std::invalid_argument("image count and size must be >= 0");
  ParallelFor(n, num_threads, [&](long long i) {
    const float* img = images + i * pixels;
    const uint8_t* k = keep != nullptr ? keep + i * pixels : nullptr;
    thread_local std::vector<float> positive;
    positive.clear();
    for (long long j = 0; j < pixels; ++j) {
      const float v = img[j];
      if (!std::isfinite(v)) {
        throw std::invalid_argument("image " + std::to_string(i) + " holds a non-finite value at pixel " +
                                    std::to_string(j) + ": expected finite line integrals");
      }
      if (v > 0.f && (k == nullptr || k[j])) positive.push_back(v);
    }
    const float hi = positive.empty()
                         ? 1.f
                         : static_cast<float>(LinearPercentile(
                               positive.data(), static_cast<long long>(positive.size()), percentile));
    window_hi[i] = hi;
    WindowImage(img, k, pixels, hi, out + i * pixels);
  });
}

}  // namespace fluororeg
