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

// LinearPercentile of m values given as runs: values [runs] ascending, each counts[r] times.
double RunsPercentile(const double* values, const long long* counts, int runs, long long m, double q) {
  const double index = static_cast<double>(m - 1) * (q / 100.0);
  const long long lo = std::min(static_cast<long long>(std::floor(index)), m - 1);
  const double t = index - static_cast<double>(lo);
  int r = 0;  // the run of the order statistic lo
  long long upto = counts[0];  // values in runs [0, r]
  while (upto <= lo && r + 1 < runs) upto += counts[++r];
  const double a = values[r];
  if (lo + 1 >= m || t == 0.0) return a;
  int next = r;  // the run of the order statistic lo + 1
  if (upto <= lo + 1) {
    do ++next; while (next + 1 < runs && counts[next] == 0);
  }
  const double b = values[next];
  return a + (b - a) * t;
}

// The grey levels 0..255 as doubles: the values of the runs of an 8-bit picture's counts.
const double* GreyLevels() {
  static const std::vector<double> levels = [] {
    std::vector<double> g(256);
    for (int i = 0; i < 256; ++i) g[i] = i;
    return g;
  }();
  return levels.data();
}

// Counts grey level g in counts [256] if it is a whole number in [0, 255] (as an 8-bit frame's
// are); else counts nothing and returns false.
inline bool CountEightBit(float g, long long* counts) {
  if (!(g >= 0.f && g <= 255.f)) return false;
  const int level = static_cast<int>(g);
  if (g != static_cast<float>(level)) return false;
  ++counts[level];
  return true;
}

// Throws std::invalid_argument naming the first non-finite grey level of `what` i [pixels].
void CheckFiniteGreyLevels(const float* img, long long pixels, const char* what, long long i) {
  // First whether all are finite (x - x is 0 for finite x, NaN for inf and NaN: a loop without
  // an exit, which vectorises); only then where the first bad one lies.
  bool finite = true;
  for (long long j = 0; j < pixels; ++j) finite &= (img[j] - img[j]) == 0.f;
  if (finite) return;
  for (long long j = 0; j < pixels; ++j) {
    if (!std::isfinite(img[j])) {
      throw std::invalid_argument(std::string(what) + " " + std::to_string(i) +
                                  " holds a non-finite grey level at pixel " + std::to_string(j) +
                                  ": expected finite values");
    }
  }
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

namespace {

// One image of WindowToUint8: window_hi = the percentile of its positive values (1 when none;
// pixels with keep 0 count as 0), out = the picture. Throws for a non-finite value of image i.
void WindowPicture(const float* img, const uint8_t* keep, long long pixels, double percentile,
                   long long i, float* window_hi, uint8_t* out) {
  thread_local std::vector<float> positive;
  positive.clear();
  for (long long j = 0; j < pixels; ++j) {
    const float v = img[j];
    if (!std::isfinite(v)) {
      throw std::invalid_argument("image " + std::to_string(i) + " holds a non-finite value at pixel " +
                                  std::to_string(j) + ": expected finite line integrals");
    }
    if (v > 0.f && (keep == nullptr || keep[j])) positive.push_back(v);
  }
  const float hi = positive.empty()
                       ? 1.f
                       : static_cast<float>(LinearPercentile(
                             positive.data(), static_cast<long long>(positive.size()), percentile));
  *window_hi = hi;
  WindowImage(img, keep, pixels, hi, out);
}

void CheckPercentile(double percentile) {
  if (!(percentile > 0.0 && percentile <= 100.0)) {
    throw std::invalid_argument("percentile " + std::to_string(percentile) + " must lie in (0, 100]");
  }
}

}  // namespace

void WindowToUint8(const float* images, const uint8_t* keep, long long n, long long pixels,
                   double percentile, int num_threads, float* window_hi, uint8_t* out) {
  CheckPercentile(percentile);
  if (n < 0 || pixels < 0) throw std::invalid_argument("image count and size must be >= 0");
  ParallelFor(n, num_threads, [&](long long i) {
    WindowPicture(images + i * pixels, keep != nullptr ? keep + i * pixels : nullptr, pixels,
                  percentile, i, window_hi + i, out + i * pixels);
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
    CheckFiniteGreyLevels(img, pixels, "frame", i);
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
    // 8-bit frames (a video's) take at most 256 grey levels: counted, not sorted.
    long long counts[256] = {0};
    bool eight_bit = true;
    for (size_t j = 0; j < sampled.size() && eight_bit; ++j) eight_bit = CountEightBit(img[sampled[j]], counts);
    const long long m = static_cast<long long>(sampled.size());
    double lo, hi;
    if (eight_bit) {
      lo = RunsPercentile(GreyLevels(), counts, 256, m, 1.0);
      hi = RunsPercentile(GreyLevels(), counts, 256, m, 99.0);
    } else {
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
      lo = LinearPercentile(values.data(), m, 1.0);
      hi = LinearPercentile(values.data(), m, 99.0);
    }
    spread[f] = hi - lo;
    level[f] = std::max(std::fabs(lo), std::fabs(hi));
  });
}

namespace {

// Pillow's bilinear filter: a triangle of half-width 1.
double Triangle(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

// The resampling taps of one axis, as Pillow computes them for a BILINEAR resize of the box
// [in0, in1) of in_size pixels to out_size pixels (its precompute_coeffs): per output pixel, the
// first input pixel, the tap count and the normalised weights [out_size, max_taps].
struct AxisTaps {
  std::vector<int> first, count;
  std::vector<double> weights;
  int max_taps = 0;
};

AxisTaps BilinearTaps(int in_size, float in0, float in1, int out_size) {
  AxisTaps t;
  const double scale = static_cast<double>(in1 - in0) / out_size;  // the difference in float
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = filterscale;  // the triangle's 1 px, widened when reducing
  t.max_taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.weights.assign(static_cast<size_t>(out_size) * t.max_taps, 0.0);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);  // truncation, as Pillow rounds
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* k = t.weights.data() + static_cast<size_t>(xx) * t.max_taps;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = Triangle((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (int x = 0; x < xmax && ww != 0.0; ++x) k[x] /= ww;
    t.first[xx] = xmin;
    t.count[xx] = xmax;
  }
  return t;
}

}  // namespace

void CropFrames(const float* frames, long long n, int height, int width, const double* boxes,
                int size, const uint8_t* inside, bool normalise, double low_percentile,
                double high_percentile, float fill, int num_threads, uint8_t* out) {
  if (n < 0 || height < 1 || width < 1) {
    throw std::invalid_argument("frames [" + std::to_string(n) + ", " + std::to_string(height) + ", " +
                                std::to_string(width) + "]: expected n >= 0 frames of at least 1 x 1 px");
  }
  if (size < 1 || size > limits::kMaxImageSide) {
    throw std::invalid_argument("crop size " + std::to_string(size) + ": expected 1 to " +
                                std::to_string(limits::kMaxImageSide) + " px");
  }
  if (!(low_percentile >= 0.0 && low_percentile <= 100.0 && high_percentile >= 0.0 &&
        high_percentile <= 100.0)) {
    throw std::invalid_argument("crop percentiles (" + std::to_string(low_percentile) + ", " +
                                std::to_string(high_percentile) + "): expected values in [0, 100]");
  }
  // A box may reach outside the frame, by at most a few frame sizes (Pillow's coordinates are
  // float32, and the padded picture must stay a sane size).
  const double reach = 4.0 * std::max(height, width) + 2.0 * size;
  for (long long f = 0; f < n; ++f) {
    const double* b = boxes + 3 * f;
    if (!(std::isfinite(b[0]) && std::isfinite(b[1]) && b[2] > 0.0 && b[2] < reach &&
          std::fabs(b[0]) < reach && std::fabs(b[1]) < reach)) {
      throw std::invalid_argument("crop box " + std::to_string(f) + " (left " + std::to_string(b[0]) + ", top " +
                                  std::to_string(b[1]) + ", side " + std::to_string(b[2]) +
                                  "): expected a finite box of positive side within a few frame sizes of "
                                  "the frame");
    }
  }
  const long long pixels = static_cast<long long>(height) * width;
  ParallelFor(n, num_threads, [&](long long f) {
    const float* img = frames + f * pixels;
    const double* b = boxes + 3 * f;
    CheckFiniteGreyLevels(img, pixels, "frame", f);
    // 1. The grey level of frame pixel j as the resampler sees it.
    double lo = 0.0, factor = 1.0;
    if (normalise) {
      double hi = 255.0;
      // 8-bit frames (a video's) take at most 256 grey levels: counted, not sorted.
      long long counts[256] = {0}, m = 0;
      bool eight_bit = true;
      for (long long j = 0; j < pixels && eight_bit; ++j) {
        if (inside != nullptr && !inside[j]) continue;
        eight_bit = CountEightBit(img[j], counts);
        m += eight_bit;
      }
      if (eight_bit && m > 0) {
        lo = RunsPercentile(GreyLevels(), counts, 256, m, low_percentile);
        hi = RunsPercentile(GreyLevels(), counts, 256, m, high_percentile);
      } else if (!eight_bit) {
        thread_local std::vector<float> values;  // float32 grey levels: the order statistics are those values
        values.clear();
        for (long long j = 0; j < pixels; ++j) {
          if (inside == nullptr || inside[j]) values.push_back(img[j]);
        }
        const long long n_values = static_cast<long long>(values.size());
        lo = LinearPercentile(values.data(), n_values, low_percentile);
        hi = LinearPercentile(values.data(), n_values, high_percentile);
      }
      if (hi <= lo) hi = lo + 1.0;
      factor = 255.0 / (hi - lo);
    }
    // 2. The padded picture's geometry; pixel (xp, yp) of it.
    const double left = b[0], top = b[1], side = b[2];
    const int pad_l = static_cast<int>(std::ceil(std::max(0.0, -left))) + 1;
    const int pad_t = static_cast<int>(std::ceil(std::max(0.0, -top))) + 1;
    const int pad_r = static_cast<int>(std::ceil(std::max(0.0, left + side - width))) + 1;
    const int pad_b = static_cast<int>(std::ceil(std::max(0.0, top + side - height))) + 1;
    const int wp = width + pad_l + pad_r, hp = height + pad_t + pad_b;
    // Row yp of the padded picture, its columns [c0, c1), into line: outside the frame or the
    // field of view `fill`, inside the grey level (stretched, or clipped to [0, 255]).
    auto picture_row = [&](int yp, int c0, int c1, float* line) {
      if (c1 <= c0) return;
      const int y = yp - pad_t;
      const int xa = std::clamp(pad_l, c0, c1), xb = std::clamp(pad_l + width, c0, c1);  // frame columns
      if (y < 0 || y >= height) {
        std::fill(line, line + (c1 - c0), fill);
        return;
      }
      std::fill(line, line + (xa - c0), fill);
      std::fill(line + (xb - c0), line + (c1 - c0), fill);
      const float* row = img + static_cast<long long>(y) * width;  // row[xp - pad_l]: column xp
      if (normalise) {
        for (int xp = xa; xp < xb; ++xp) {
          line[xp - c0] = static_cast<float>(
              std::min(std::max((static_cast<double>(row[xp - pad_l]) - lo) * factor, 0.0), 255.0));
        }
      } else {
        for (int xp = xa; xp < xb; ++xp) line[xp - c0] = std::min(std::max(row[xp - pad_l], 0.f), 255.f);
      }
      if (inside != nullptr) {
        const uint8_t* in = inside + static_cast<long long>(y) * width;
        for (int xp = xa; xp < xb; ++xp) line[xp - c0] = in[xp - pad_l] ? line[xp - c0] : fill;
      }
    };
    // 3. Pillow's two passes over the box (corners as float32).
    const double x0 = left + pad_l, y0 = top + pad_t;
    const AxisTaps h = BilinearTaps(wp, static_cast<float>(x0), static_cast<float>(x0 + side), size);
    const AxisTaps v = BilinearTaps(hp, static_cast<float>(y0), static_cast<float>(y0 + side), size);
    const int row_first = v.first[0], row_last = v.first[size - 1] + v.count[size - 1];
    const int col_first = h.first[0], col_last = h.first[size - 1] + h.count[size - 1];
    thread_local std::vector<float> rows, line;  // rows [row_last - row_first, size]: the horizontal pass
    rows.assign(static_cast<size_t>(std::max(row_last - row_first, 0)) * size, 0.f);
    line.resize(static_cast<size_t>(std::max(col_last - col_first, 0)));
    for (int r = row_first; r < row_last; ++r) {
      picture_row(r, col_first, col_last, line.data());  // the taps' pixels
      for (int xx = 0; xx < size; ++xx) {
        const double* k = h.weights.data() + static_cast<size_t>(xx) * h.max_taps;
        const float* px = line.data() + (h.first[xx] - col_first);
        double ss = 0.0;
        for (int x = 0; x < h.count[xx]; ++x) ss += px[x] * k[x];
        rows[static_cast<size_t>(r - row_first) * size + xx] = static_cast<float>(ss);
      }
    }
    uint8_t* crop = out + f * static_cast<long long>(size) * size;
    for (int yy = 0; yy < size; ++yy) {
      const double* k = v.weights.data() + static_cast<size_t>(yy) * v.max_taps;
      const int y_first = v.first[yy] - row_first;
      for (int xx = 0; xx < size; ++xx) {
        double ss = 0.0;
        for (int y = 0; y < v.count[yy]; ++y) ss += rows[static_cast<size_t>(y + y_first) * size + xx] * k[y];
        // 4. Rounded half to even (the default rounding mode), clipped.
        const float r = std::nearbyint(static_cast<float>(ss));
        crop[static_cast<long long>(yy) * size + xx] = static_cast<uint8_t>(std::min(std::max(r, 0.f), 255.f));
      }
    }
  });
}

namespace {

// Beer-Lambert inversion of a crop's grey level v under the open field i_open:
// max(0, -ln(max(v, 0.5) / i_open)) in double, as float32 (LogAttenuationPictures).
float CropLineIntegral(double v, double i_open) {
  return static_cast<float>(std::max(-std::log(std::max(v, 0.5) / i_open), 0.0));
}

// LogAttenuationPictures of one crop whose grey levels are integers in [0, 255]: the same
// picture from the grey levels' counts [256] (CountEightBit; no sort) and one logarithm per level.
void EightBitLogPicture(const float* crop, long long pixels, const long long* counts, double percentile,
                        uint8_t* out) {
  const double i_open = std::max(RunsPercentile(GreyLevels(), counts, 256, pixels, 99.0), 1.0);
  float L[256];  // per grey level; non-increasing in the level
  for (int g = 0; g < 256; ++g) L[g] = CropLineIntegral(g, i_open);
  // The positive values of L in ascending order: grey levels from the brightest down.
  double values[256];
  long long positive_counts[256];
  int runs = 0;
  long long positives = 0;
  for (int g = 255; g >= 0; --g) {
    if (L[g] > 0.f && counts[g] > 0) {
      values[runs] = L[g];
      positive_counts[runs++] = counts[g];
      positives += counts[g];
    }
  }
  const float hi = positives == 0 ? 1.f
                                  : static_cast<float>(RunsPercentile(values, positive_counts, runs,
                                                                      positives, percentile));
  uint8_t picture[256];
  for (int g = 0; g < 256; ++g) WindowImage(&L[g], nullptr, 1, hi, &picture[g]);
  for (long long j = 0; j < pixels; ++j) out[j] = picture[static_cast<int>(crop[j])];
}

}  // namespace

void LogAttenuationPictures(const float* crops, long long n, long long pixels, double percentile,
                            int num_threads, uint8_t* out) {
  CheckPercentile(percentile);
  if (n < 0 || pixels < 1) throw std::invalid_argument("crop count must be >= 0 and crops at least 1 px");
  ParallelFor(n, num_threads, [&](long long i) {
    const float* crop = crops + i * pixels;
    CheckFiniteGreyLevels(crop, pixels, "crop", i);
    // 8-bit crops (the pipeline's) take at most 256 grey levels: counted, not sorted.
    long long counts[256] = {0};
    bool eight_bit = true;
    for (long long j = 0; j < pixels && eight_bit; ++j) eight_bit = CountEightBit(crop[j], counts);
    if (eight_bit) {
      EightBitLogPicture(crop, pixels, counts, percentile, out + i * pixels);
      return;
    }
    thread_local std::vector<float> values, line_integrals;
    values.assign(crop, crop + pixels);
    const double i_open = std::max(LinearPercentile(values.data(), pixels, 99.0), 1.0);
    line_integrals.resize(static_cast<size_t>(pixels));
    for (long long j = 0; j < pixels; ++j) line_integrals[j] = CropLineIntegral(crop[j], i_open);
    float hi = 0.f;
    WindowPicture(line_integrals.data(), nullptr, pixels, percentile, i, &hi, out + i * pixels);
  });
}

}  // namespace fluororeg
