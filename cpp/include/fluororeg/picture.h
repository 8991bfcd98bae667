// Image conversions on the CPU, one pass per image:
// - X-ray frames to line integrals (FramesToLineIntegrals: the intensity refinement's input;
//   the Python side is fluororeg.core.refine.intensity_to_line_integrals), undistorted on the way;
// - line integrals to 8-bit pictures (WindowToUint8: the documented step from DRR to picture;
//   the Python side is fluororeg.core.render.to_uint8 and the dataset's render_samples): each
//   image gets the window (0, p), p a percentile of its positive values, so the background stays
//   black and a few very dense rays do not wash out the bone;
// - the register pipeline's input checks (FrameStatistics: the Python side is
//   fluororeg.pipeline.quality.image_statistics);
// - the crops the landmark detector and the style translator see (CropFrames,
//   LogAttenuationPictures: the Python side is fluororeg.inference.crops).
#pragma once

#include <cstdint>

namespace fluororeg {

// The q-th percentile (q in [0, 100]) of values [m] (m >= 1) by linear interpolation between
// the order statistics at (m - 1) q / 100 (NumPy's default 'linear' method), in double.
// Reorders values.
double LinearPercentile(float* values, long long m, double q);
double LinearPercentile(double* values, long long m, double q);

// Beer-Lambert inversion of intensifier frames [n, height, width] float32 grey levels (open
// field bright) into line integrals out [n, height, width] float32, computed in double. Per frame:
// 1. resampled at source [2, height, width] (x plane, then y plane: where each output pixel lies
//    in the frame, px; bilinear, edge values beyond the frame: scipy.ndimage.map_coordinates with
//    order 1 and mode 'nearest'), or taken as it is when source is nullptr (undistortion:
//    DistortionModel.source_map);
// 2. I_open = max(1e-6, the 99th percentile (LinearPercentile) of the resampled values where mask
//    [height, width] is non-zero; of all of them when mask is nullptr or all zero);
// 3. out = max(0, -ln(max(v, 1e-4 I_open) / I_open)).
// Frames run on num_threads threads (0: all cores). Throws std::invalid_argument for a
// non-finite grey level or source coordinate (naming the frame and pixel) or a bad size.
void FramesToLineIntegrals(const float* frames, long long n, int height, int width,
                           const double* source, const uint8_t* mask, int num_threads, float* out);

// images [n, pixels] float32 line integrals (finite); keep [n, pixels] or nullptr: a pixel
// with keep 0 counts as 0 (the dataset's bone-only images). Per image: window_hi [n] = the
// `percentile` of its positive values (1 when it has none), and
// out [n, pixels] = round-half-even(255 * clip(v / window_hi, 0, 1)) in float32, as NumPy
// computes it. Images run on num_threads threads (0: all cores). Throws std::invalid_argument
// for a non-finite value or a percentile outside (0, 100].
void WindowToUint8(const float* images, const uint8_t* keep, long long n, long long pixels,
                   double percentile, int num_threads, float* window_hi, uint8_t* out);

// The per-frame figures of the input checks, of frames [n, height, width] float32 grey levels
// (one view), computed in double, frames on num_threads threads (0: all cores):
// - thumbs [n, side, side]: block means, rows first (the mean of each row bin's rows), then
//   columns; bin i of the rows holds rows [r_i, r_{i+1}), r_i = (long long)(i * (height / side)),
//   r_side = height (NumPy's linspace(0, height, side + 1).astype(int)); an empty bin takes row
//   r_i (as np.add.reduceat does); the same for the columns with width;
// - spread [n] = p99 - p1 and level [n] = max(|p1|, |p99|), p the LinearPercentile of the
//   pixels where inside [height, width] is non-zero (all pixels when nullptr), every
//   `stride`-th of them in row-major order; NaN for both when one of those is not finite.
// Throws std::invalid_argument for sizes out of range, stride < 1 or an `inside` without any
// pixel.
void FrameStatistics(const float* frames, long long n, int height, int width, int side,
                     const uint8_t* inside, long long stride, int num_threads, double* thumbs,
                     double* spread, double* level);

// Crops of frames [n, height, width] float32 grey levels, as fluororeg.inference.crops.crop_frame
// makes them (its NumPy/Pillow reference: fluororeg._reference.picture.crop_frame). Per frame f,
// the square box boxes [n, 3] = (left, top, side) in frame pixel-edge units (pixel (0, 0) covers
// [0, 1) x [0, 1)) becomes out [f] [size, size] uint8:
// 1. grey levels: with `normalise`, (v - lo) * 255 / (hi - lo) clipped to [0, 255], lo and hi the
//    low_percentile and high_percentile (LinearPercentile) of the frame's pixels where inside
//    [height, width] is non-zero (all pixels when nullptr; hi = lo + 1 when not above lo);
//    without, v clipped to [0, 255]; then float32;
// 2. the frame padded by ceil(max(0, overhang)) + 1 px on each side; padding, and pixels where
//    inside is 0, hold `fill`;
// 3. the box resampled to size x size px as Pillow's BILINEAR resize of a box does it (a
//    triangle filter widened by the reduction factor, weights normalised per output pixel;
//    columns, then rows; sums in double, each pass stored as float32; the box's corners taken
//    as float32);
// 4. rounded half to even and clipped to [0, 255].
// Frames run on num_threads threads (0: all cores). Throws std::invalid_argument for a
// non-finite or degenerate box, a size out of range, a non-finite grey level, or percentiles
// outside [0, 100].
void CropFrames(const float* frames, long long n, int height, int width, const double* boxes,
                int size, const uint8_t* inside, bool normalise, double low_percentile,
                double high_percentile, float fill, int num_threads, uint8_t* out);

// DRR-like pictures of crops of intensifier frames (grey levels, open field bright) [n, pixels],
// as fluororeg.inference.crops.log_attenuation_crop makes them: per crop, Beer-Lambert inverted,
// L = max(0, -ln(max(v, 0.5) / I_open)) in double, then float32, with I_open = max(1, the 99th
// percentile of the crop's values), then windowed as WindowToUint8 windows it (0 to the
// `percentile` of the positive values of L). Crops run on num_threads threads (0: all cores).
// Throws std::invalid_argument for a non-finite grey level or a percentile outside (0, 100].
void LogAttenuationPictures(const float* crops, long long n, long long pixels, double percentile,
                            int num_threads, uint8_t* out);

}  // namespace fluororeg
