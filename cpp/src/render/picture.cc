// DRRs to 8-bit pictures (see picture.h).
#include "fluororeg/picture.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/cpu_clones.h"
#include "fluororeg/limits.h"
#include "fluororeg/parallel.h"

namespace fluororeg {

namespace {

template <typename T>
double LinearPercentileOf(T* values, long long m, double q) {
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

}  // namespace

double LinearPercentile(float* values, long long m, double q) { return LinearPercentileOf(values, m, q); }
double LinearPercentile(double* values, long long m, double q) { return LinearPercentileOf(values, m, q); }

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

// out [pixels] = img [height, width] sampled bilinearly at (sx, sy) [pixels] px, indices clamped
// to the frame (scipy's map_coordinates, order 1, mode 'nearest').
FLUORO_CPU_CLONES void ResampleClamped(const float* img, int height, int width, const double* sx,
                                       const double* sy, long long pixels, double* out) {
  // Coordinates more than a pixel beyond the frame sample its edge whatever their value; they
  // are brought within 2 px of it first, so that huge ones convert to integers safely.
  const double x_lo = -2.0, x_hi = width + 1.0, y_lo = -2.0, y_hi = height + 1.0;
  for (long long j = 0; j < pixels; ++j) {
    const double x = std::min(std::max(sx[j], x_lo), x_hi), y = std::min(std::max(sy[j], y_lo), y_hi);
    const double fx = std::floor(x), fy = std::floor(y);
    const double tx = x - fx, ty = y - fy;
    const long long x0 = static_cast<long long>(fx), y0 = static_cast<long long>(fy);
    const long long xa = std::min<long long>(std::max<long long>(x0, 0), width - 1);
    const long long xb = std::min<long long>(std::max<long long>(x0 + 1, 0), width - 1);
    const long long ya = std::min<long long>(std::max<long long>(y0, 0), height - 1);
    const long long yb = std::min<long long>(std::max<long long>(y0 + 1, 0), height - 1);
    const float* ra = img + ya * width;
    const float* rb = img + yb * width;
    const double top = (1.0 - tx) * ra[xa] + tx * ra[xb];
    const double bottom = (1.0 - tx) * rb[xa] + tx * rb[xb];
    out[j] = (1.0 - ty) * top + ty * bottom;
  }
}

// out [pixels] = max(0, -ln(max(v, floor_value) / i_open)) in float32.
FLUORO_CPU_CLONES void NegativeLog(const double* values, long long pixels, double floor_value,
                                   double i_open, float* out) {
  for (long long j = 0; j < pixels; ++j) {
    out[j] = static_cast<float>(std::max(-std::log(std::max(values[j], floor_value) / i_open), 0.0));
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

void FramesToLineIntegrals(const float* frames, long long n, int height, int width,
                           const double* source, const uint8_t* mask, int num_threads, float* out) {
  if (n < 0 || height < 1 || width < 1) {
    throw std::invalid_argument("frames [" + std::to_string(n) + ", " + std::to_string(height) + ", " +
                                std::to_string(width) + "]: expected n >= 0 frames of at least 1 x 1 px");
  }
  const long long pixels = static_cast<long long>(height) * width;
  if (source != nullptr) {
    for (long long j = 0; j < 2 * pixels; ++j) {
      if (!std::isfinite(source[j])) {
        throw std::invalid_argument("the source map holds a non-finite " + std::string(j < pixels ? "x" : "y") +
                                    " coordinate at pixel " + std::to_string(j % pixels) +
                                    ": expected finite frame coordinates (px)");
      }
    }
  }
  bool any_mask = false;
  for (long long j = 0; mask != nullptr && j < pixels && !any_mask; ++j) any_mask = mask[j] != 0;
  ParallelFor(n, num_threads, [&](long long i) {
    const float* img = frames + i * pixels;
    for (long long j = 0; j < pixels; ++j) {
      if (!std::isfinite(img[j])) {
        throw std::invalid_argument("frame " + std::to_string(i) + " holds a non-finite grey level at pixel " +
                                    std::to_string(j) + ": expected finite values");
      }
    }
    thread_local std::vector<double> values, kept;
    values.resize(static_cast<size_t>(pixels));
    if (source == nullptr) {
      std::copy(img, img + pixels, values.begin());
    } else {
      ResampleClamped(img, height, width, source, source + pixels, pixels, values.data());
    }
    kept.clear();
    if (any_mask) {
      for (long long j = 0; j < pixels; ++j) {
        if (mask[j]) kept.push_back(values[j]);
      }
    } else {
      kept.assign(values.begin(), values.end());
    }
    const double i_open =
        std::max(LinearPercentile(kept.data(), static_cast<long long>(kept.size()), 99.0), 1e-6);
    NegativeLog(values.data(), pixels, i_open * 1e-4, i_open, out + i * pixels);
  });
}

namespace {

// Bin edges [side + 1] of `size` pixels into `side` bins, as NumPy's
// linspace(0, size, side + 1).astype(int) gives them (the last one set to size).
std::vector<long long> BinEdges(int size, int side) {
  std::vector<long long> edges(side + 1);
  const double step = static_cast<double>(size) / side;
  for (int i = 0; i < side; ++i) edges[i] = static_cast<long long>(i * step);
  edges[side] = size;
  return edges;
}

}  // namespace

void FrameStatistics(const float* frames, long long n, int height, int width, int side,
                     const uint8_t* inside, long long stride, int num_threads, double* thumbs,
                     double* spread, double* level) {
  if (n < 0 || height < 1 || width < 1 || side < 1 || side > limits::kMaxImageSide) {
    throw std::invalid_argument("frame statistics of [" + std::to_string(n) + ", " + std::to_string(height) +
                                ", " + std::to_string(width) + "] frames with " + std::to_string(side) +
                                " x " + std::to_string(side) + " thumbnails: expected n >= 0, frames of at "
                                "least 1 x 1 px and a thumbnail side >= 1");
  }
  if (stride < 1) throw std::invalid_argument("stride " + std::to_string(stride) + ": expected >= 1");
  const long long pixels = static_cast<long long>(height) * width;
  std::vector<long long> sampled;  // the pixels whose values give the percentiles
  long long count = 0;
  for (long long j = 0; j < pixels; ++j) {
    if (inside != nullptr && !inside[j]) continue;
    if (count++ % stride == 0) sampled.push_back(j);
  }
  if (sampled.empty()) throw std::invalid_argument("the frame statistics' mask holds no pixel");
  const std::vector<long long> rows = BinEdges(height, side), cols = BinEdges(width, side);
  ParallelFor(n, num_threads, [&](long long f) {
    const float* img = frames + f * pixels;
    double* thumb = thumbs + f * side * side;
    thread_local std::vector<double> row_means, values;
    row_means.assign(static_cast<size_t>(side) * width, 0.0);
    for (int b = 0; b < side; ++b) {  // [side, width]: the mean of each row bin
      double* acc = row_means.data() + static_cast<size_t>(b) * width;
      const long long y0 = rows[b], y1 = std::max(rows[b + 1], y0 + 1);
      for (long long y = y0; y < y1; ++y) {
        const float* r = img + y * width;
        for (int x = 0; x < width; ++x) acc[x] += r[x];
      }
      const double k = static_cast<double>(std::max<long long>(rows[b + 1] - rows[b], 1));
      for (int x = 0; x < width; ++x) acc[x] /= k;
    }
    for (int b = 0; b < side; ++b) {
      const double* acc = row_means.data() + static_cast<size_t>(b) * width;
      for (int a = 0; a < side; ++a) {
        const long long x0 = cols[a], x1 = std::max(cols[a + 1], x0 + 1);
        double sum = 0.0;
        for (long long x = x0; x < x1; ++x) sum += acc[x];
        thumb[b * side + a] = sum / static_cast<double>(std::max<long long>(cols[a + 1] - cols[a], 1));
      }
    }
    values.resize(sampled.size());
    bool finite = true;
    for (size_t j = 0; j < sampled.size(); ++j) {
      values[j] = img[sampled[j]];
      finite = finite && std::isfinite(values[j]);
    }
    if (!finite) {
      spread[f] = level[f] = std::numeric_limits<double>::quiet_NaN();
      return;
    }
    const long long m = static_cast<long long>(values.size());
    const double lo = LinearPercentile(values.data(), m, 1.0);
    const double hi = LinearPercentile(values.data(), m, 99.0);
    spread[f] = hi - lo;
    level[f] = std::max(std::fabs(lo), std::fabs(hi));
  });
}

}  // namespace fluororeg
