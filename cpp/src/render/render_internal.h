// Shared host-side preparation of the renderers (used by the CPU backend and the CUDA
// backend) and the CUDA backend's entry points. Not installed: internal to the library.
#pragma once

#include <cstdint>
#include <vector>

#include "fluororeg/render.h"
#include "fluororeg/render_kernels.h"

namespace fluororeg {
namespace internal {

// General inverse of an affine transform (throws when singular).
Affine3<double> InvertAffine(const Affine3<double>& a);

// Shear-warp parameters of one parallel-beam pose.
kernels::ShearWarpSetup MakeShearWarpSetup(const VolumeGrid& volume, const ParallelCamera& camera,
                                           const double* pose, double scale);

// The volume as slices along `axis`, each padded by one zero voxel on every side:
// [n_slices, slice_h, slice_w] with slice_w = n_a + 2, slice_h = n_b + 2.
struct PaddedSlices {
  int axis = -1;
  int n_slices = 0, slice_w = 0, slice_h = 0;
  std::vector<float> data;
  // Per padded row: first and last non-zero padded column (first > last when empty).
  std::vector<int32_t> row_extent;  // [n_slices, slice_h, 2]
};
PaddedSlices MakePaddedSlices(const VolumeGrid& volume, int axis);

// Cone-beam parameters of one (view, pose) pair.
kernels::ConeRaySetup MakeConeRaySetup(const VolumeGrid& volume, const ConeView& view,
                                       const double* pose, double step_voxels);
// Block occupancy [bz, by, bx] (see kernels::ConeRayIntegral).
std::vector<uint8_t> MakeOccupancy(const VolumeGrid& volume, int* bx, int* by, int* bz);

#if defined(FLUORO_WITH_CUDA)
int CudaDeviceCount();
void RenderParallelDrrCuda(const VolumeGrid& volume, const ParallelCamera& camera,
                           const double* poses, const double* scales, int n, float* out);
void RenderConeDrrCuda(const VolumeGrid& volume, const ConeView* views, const double* poses,
                       int n, float* out, double step_voxels);
void ProjectPointsCuda(bool cone, const ParallelCamera& camera, const ConeView* views,
                       const double* poses, const double* scales, int n, const double* points,
                       int m, double* out_xy, uint8_t* in_fov);
#endif

// Throws std::runtime_error unless the CUDA backend is built and a device is present.
void RequireCuda();

}  // namespace internal
}  // namespace fluororeg
