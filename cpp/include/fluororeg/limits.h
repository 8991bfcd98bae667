// Size limits of the core and overflow-checked size arithmetic: the one place where the sizes
// of allocations are computed from caller-given counts (bindings, renderers, CUDA staging).
//
// Limits (checked before anything is allocated; an argument beyond one throws
// std::invalid_argument, which Python sees as ValueError, naming the value and the limit):
//   kMaxImageSide     16384 px    width or height of one image (a 16k detector is 4x the
//                                 largest clinical intensifier; 16384^2 float32 = 1 GiB)
//   kMaxBatch         2^24        poses / frames / views in one call (int indices stay far
//                                 from 2^31 in every per-pose loop)
//   kMaxPoints        2^20        landmarks / points / beads in one call
//   kMaxVolumeSide    16384       voxels along one axis of a volume
//   kMaxVolumeVoxels  2^30        voxels of one volume (4 GiB of float32; the renderer keeps a
//                                 copy and up to three padded slice stacks of about that size)
//   kMaxOutputBytes   8 GiB       bytes of one output array a call allocates (e.g. DRRs
//                                 [n, H, W] float32: 32768 images of 256 x 256 = 8 GiB), fixed
//                                 rather than a share of physical memory so that a call
//                                 succeeds or fails alike on every machine; larger batches are
//                                 rendered in several calls
//   kMaxThreads       1024        num_threads (0 = all hardware threads)
// Size products use CheckedMul, which throws std::invalid_argument instead of wrapping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>

namespace fluororeg {
namespace limits {

constexpr long long kMaxImageSide = 16384;
constexpr long long kMaxBatch = 1LL << 24;
constexpr long long kMaxPoints = 1LL << 20;
constexpr long long kMaxVolumeSide = 16384;
constexpr long long kMaxVolumeVoxels = 1LL << 30;
constexpr long long kMaxOutputBytes = 8LL << 30;
constexpr long long kMaxThreads = 1024;

// a * b; throws std::invalid_argument naming `what` when the product does not fit size_t.
inline size_t CheckedMul(size_t a, size_t b, const char* what) {
  if (b != 0 && a > std::numeric_limits<size_t>::max() / b) {
    throw std::invalid_argument(std::string(what) + ": the size " + std::to_string(a) + " x " +
                                std::to_string(b) + " overflows");
  }
  return a * b;
}

// The product of `dims` (1 for none), checked as CheckedMul.
inline size_t CheckedProduct(std::initializer_list<size_t> dims, const char* what) {
  size_t p = 1;
  for (size_t d : dims) p = CheckedMul(p, d, what);
  return p;
}

// Throws std::invalid_argument "name = value: expected lo to hi" unless lo <= value <= hi.
inline void CheckRange(long long value, long long lo, long long hi, const char* name,
                       const char* unit = "") {
  if (value < lo || value > hi) {
    throw std::invalid_argument(std::string(name) + " = " + std::to_string(value) + ": expected " +
                                std::to_string(lo) + " to " + std::to_string(hi) + unit);
  }
}

// Bytes of an array of `dims` elements of `element_bytes` each, checked for overflow and
// against kMaxOutputBytes (the error names `what` and the shape).
inline size_t CheckedArrayBytes(std::initializer_list<size_t> dims, size_t element_bytes,
                                const char* what) {
  std::string shape = "(";
  for (size_t d : dims) shape += (shape.size() > 1 ? ", " : "") + std::to_string(d);
  shape += ")";
  size_t bytes = element_bytes;
  bool overflow = false;
  for (size_t d : dims) {
    if (d != 0 && bytes > std::numeric_limits<size_t>::max() / d) {
      overflow = true;
      break;
    }
    bytes *= d;
  }
  if (overflow || bytes > static_cast<unsigned long long>(kMaxOutputBytes)) {
    for (size_t d : dims) {
      if (d == 0) return 0;  // an empty array, whatever its other sides
    }
    throw std::invalid_argument(
        std::string(what) + " of shape " + shape + " would take " +
        (overflow ? std::string("more bytes than size_t holds")
                  : std::to_string(bytes) + " bytes") +
        ": expected at most " + std::to_string(kMaxOutputBytes) +
        " bytes (8 GiB) per array; split the call into smaller batches");
  }
  return bytes;
}

}  // namespace limits
}  // namespace fluororeg
