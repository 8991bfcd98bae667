// From line integrals to 8-bit pictures (the documented step from DRR to picture; the Python
// side is fluororeg.core.render.to_uint8 and the dataset's render_samples): each image gets the
// window (0, p), p a percentile of its positive values, so the background stays black and a few
// very dense rays do not wash out the bone.
#pragma once

#include <cstdint>

namespace fluororeg {

// The q-th percentile (q in [0, 100]) of values [m] (m >= 1) by linear interpolation between
// the order statistics at (m - 1) q / 100 (NumPy's default 'linear' method), in double.
// Reorders values.
double LinearPercentile(float* values, long long m, double q);

// images [n, pixels] float32 line integrals (finite); keep [n, pixels] or nullptr: a pixel
// with keep 0 counts as 0 (the dataset's bone-only images). Per image: window_hi [n] = the
// `percentile` of its positive values (1 when it has none), and
// out [n, pixels] = round-half-even(255 * clip(v / window_hi, 0, 1)) in float32, as NumPy
// computes it. Images run on num_threads threads (0: all cores). Throws std::invalid_argument
// for a non-finite value or a percentile outside (0, 100].
void WindowToUint8(const float* images, const uint8_t* keep, long long n, long long pixels,
                   double percentile, int num_threads, float* window_hi, uint8_t* out);

}  // namespace fluororeg
