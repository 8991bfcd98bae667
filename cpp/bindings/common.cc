// Helpers shared by the binding areas: device names and packed cone views.
#include <cmath>
#include <string>
#include <vector>

#include <iomanip>
#include <sstream>

#include "bindings.h"

namespace fluororeg {
namespace bindings {

Device ParseDevice(const std::string& device) {
  if (device == "cpu") return Device::kCpu;
  if (device == "cuda") return Device::kCuda;
  throw std::invalid_argument("device '" + device + "' is unknown: expected 'cpu' or 'cuda'");
}

void CheckThreads(int num_threads) {
  limits::CheckRange(num_threads, 0, limits::kMaxThreads, "num_threads", " (0 = all cores)");
}

void CheckCount(size_t count, long long max, const char* name) {
  if (count > static_cast<unsigned long long>(max)) {
    throw std::invalid_argument(std::string("got ") + std::to_string(count) + " " + name +
                                ": expected at most " + std::to_string(max) + " per call");
  }
}

ConeView UnpackViewRow(const double* r, const std::string& where) {
  for (int i = 0; i < kViewColumns; ++i) {
    if (!std::isfinite(r[i])) {
      throw std::invalid_argument(where + " holds a non-finite value at index " + std::to_string(i));
    }
  }
  ConeView v;
  for (int c = 0; c < 3; ++c) {
    v.source[c] = r[c];
    v.intensifier_centre[c] = r[3 + c];
    v.u[c] = r[6 + c];
    v.v[c] = r[9 + c];
  }
  v.pitch_u = r[12];
  v.pitch_v = r[13];
  if (!(v.pitch_u > 0) || !(v.pitch_v > 0)) {
    throw std::invalid_argument(where + ": pixel pitches must be positive, got " +
                                std::to_string(r[12]) + " and " + std::to_string(r[13]));
  }
  for (int c : {14, 15}) {
    if (!(r[c] >= 1 && r[c] <= limits::kMaxImageSide) || r[c] != static_cast<int>(r[c])) {
      throw std::invalid_argument(where + ": image " + (c == 14 ? "width" : "height") + " = " +
                                  [&] {
                                    std::ostringstream o;
                                    o << std::setprecision(17) << r[c];
                                    return o.str();
                                  }() + ": expected a whole number of pixels from 1 to " +
                                  std::to_string(limits::kMaxImageSide));
    }
  }
  v.width = static_cast<int>(r[14]);
  v.height = static_cast<int>(r[15]);
  return v;
}

void PackViewRow(const ConeView& v, double* r) {
  for (int c = 0; c < 3; ++c) {
    r[c] = v.source[c];
    r[3 + c] = v.intensifier_centre[c];
    r[6 + c] = v.u[c];
    r[9 + c] = v.v[c];
  }
  r[12] = v.pitch_u;
  r[13] = v.pitch_v;
  r[14] = v.width;
  r[15] = v.height;
}

std::vector<ConeView> UnpackViews(const InArray<double>& views) {
  CheckShape(views, "views", {-1, kViewColumns});
  const size_t n = views.shape(0);
  CheckCount(n, limits::kMaxBatch, "views");
  std::vector<ConeView> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = UnpackViewRow(views.data() + kViewColumns * i, "view " + std::to_string(i));
  }
  return out;
}

std::vector<ConeView> UnpackViewsForPoses(const InArray<double>& views, const InArray<double>& poses) {
  CheckShape(poses, "poses", {-1, 6});
  CheckCount(poses.shape(0), limits::kMaxBatch, "poses");
  std::vector<ConeView> v = UnpackViews(views);
  const size_t n = poses.shape(0);
  if (v.size() != n) {
    throw std::invalid_argument("got " + std::to_string(v.size()) + " views for " +
                                std::to_string(n) + " poses: expected one view per pose");
  }
  return v;
}

VolumeGrid GridFromArrays(const InArray<float>& volume, const InArray<double>& model_from_voxel,
                          const std::string& name) {
  CheckShape(volume, name.c_str(), {-1, -1, -1});
  CheckShape(model_from_voxel, (name == "volume" ? std::string("model_from_voxel")
                                                 : name + "_model_from_voxel").c_str(), {3, 4});
  size_t voxels = 1;
  for (size_t i = 0; i < 3; ++i) {
    if (volume.shape(i) > static_cast<size_t>(limits::kMaxVolumeSide)) {
      throw std::invalid_argument(name + " has " + std::to_string(volume.shape(i)) +
                                  " voxels along axis " + std::to_string(i) + ": expected at most " +
                                  std::to_string(limits::kMaxVolumeSide));
    }
    voxels = limits::CheckedMul(voxels, volume.shape(i), name.c_str());
  }
  if (voxels > static_cast<size_t>(limits::kMaxVolumeVoxels)) {
    throw std::invalid_argument(name + " has " + std::to_string(voxels) + " voxels: expected at most " +
                                std::to_string(limits::kMaxVolumeVoxels) + " (1024^3)");
  }
  VolumeGrid g;
  g.data = volume.data();
  g.nz = static_cast<int>(volume.shape(0));
  g.ny = static_cast<int>(volume.shape(1));
  g.nx = static_cast<int>(volume.shape(2));
  for (int i = 0; i < 12; ++i) g.model_from_voxel.m[i] = model_from_voxel.data()[i];
  return g;
}

}  // namespace bindings
}  // namespace fluororeg
