// One Bind* function per area of the core; module.cc calls them all.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstddef>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

#include "fluororeg/limits.h"
#include "fluororeg/render.h"

namespace fluororeg {
namespace bindings {

namespace nb = nanobind;

// Read-only, C-contiguous host arrays as they come from NumPy.
template <typename T>
using InArray = nb::ndarray<const T, nb::c_contig, nb::device::cpu>;

// A new NumPy array owned by Python (zero-initialised). The size is checked for overflow and
// against limits::kMaxOutputBytes (ValueError naming `what` and the shape) before allocating.
template <typename T>
nb::ndarray<nb::numpy, T> NewArray(std::initializer_list<size_t> shape,
                                   const char* what = "output array") {
  const size_t count = limits::CheckedArrayBytes(shape, sizeof(T), what) / sizeof(T);
  T* data = new T[count > 0 ? count : 1]();
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  return nb::ndarray<nb::numpy, T>(data, shape.size(), shape.begin(), owner);
}

// Throws ValueError unless `a` has the given number of dimensions and, where an expected
// size is >= 0, that size.
template <typename A>
void CheckShape(const A& a, const char* name, std::initializer_list<long long> expected) {
  auto describe = [&]() {
    std::string got = "(";
    for (size_t i = 0; i < a.ndim(); ++i) got += (i ? ", " : "") + std::to_string(a.shape(i));
    got += a.ndim() == 1 ? ",)" : ")";
    std::string want = "(";
    size_t i = 0;
    for (long long e : expected) {
      want += (i++ ? ", " : "") + (e < 0 ? std::string("*") : std::to_string(e));
    }
    want += expected.size() == 1 ? ",)" : ")";
    return std::string(name) + " has shape " + got + ", expected " + want;
  };
  if (a.ndim() != expected.size()) throw std::invalid_argument(describe());
  size_t i = 0;
  for (long long e : expected) {
    if (e >= 0 && static_cast<long long>(a.shape(i)) != e) throw std::invalid_argument(describe());
    ++i;
  }
}

Device ParseDevice(const std::string& device);

// Throws ValueError unless num_threads lies in [0, limits::kMaxThreads] (0 = all cores).
void CheckThreads(int num_threads);
// Throws ValueError unless `count` (what `name` counts, e.g. "poses") is at most `max`.
void CheckCount(size_t count, long long max, const char* name);

// A volume [nz, ny, nx] float32 and its model_from_voxel [3, 4] as a borrowed VolumeGrid
// (shape errors name `name`).
VolumeGrid GridFromArrays(const InArray<float>& volume, const InArray<double>& model_from_voxel,
                          const std::string& name = "volume");

// Packed cone views: [n, 16] = source xyz, intensifier centre xyz, u xyz, v xyz, pitch_u,
// pitch_v, width, height (mm, px). Unpacking checks finite values, positive pitches and whole
// positive image sizes (errors name `where`); the core validates the geometry itself.
constexpr int kViewColumns = 16;
ConeView UnpackViewRow(const double* row, const std::string& where);
void PackViewRow(const ConeView& view, double* row);
std::vector<ConeView> UnpackViews(const InArray<double>& views);
// Views [n, 16] for poses [n, 6]: one view per pose.
std::vector<ConeView> UnpackViewsForPoses(const InArray<double>& views, const InArray<double>& poses);

void BindRender(nb::module_& m);
void BindRegistration(nb::module_& m);
void BindCalibration(nb::module_& m);
void BindRefine(nb::module_& m);

}  // namespace bindings
}  // namespace fluororeg
