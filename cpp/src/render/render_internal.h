// Shared host-side preparation of the renderers (used by the CPU backend and the CUDA
// backend) and the CUDA backend's entry points. Not installed: internal to the library.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
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
  // Per pair of neighbouring padded rows: where samples can be non-zero (kernels::SliceStack).
  std::vector<int64_t> stretch_offset;  // [n_slices * slice_h + 1]
  std::vector<int32_t> stretches;       // [stretch_offset.back(), 2]
  kernels::SliceStack Stack() const {
    return {data.data(), stretch_offset.data(), stretches.data()};
  }
};
PaddedSlices MakePaddedSlices(const VolumeGrid& volume, int axis);

// The stretches [lo, hi) of left taps (appended to *out as pairs) that can meet a non-zero
// voxel of two neighbouring padded rows, from the rows' runs [first, last] of non-zero voxels
// (sorted pairs a .. a_end and b .. b_end): each run widened to [first - 1, last + 1), the two
// lists merged in column order and joined across gaps narrower than kernels::kMinSkippedGap.
void RowPairStretches(const int32_t* a, const int32_t* a_end, const int32_t* b,
                      const int32_t* b_end, std::vector<int32_t>* out);

struct CudaVolume;  // the CUDA backend's device copies and work buffers (cuda/render_cuda.cu)

}  // namespace internal

struct RenderVolume::State {
  std::vector<float> voxels;  // [nz, ny, nx] owned copy (empty for RenderVolume::View)
  VolumeGrid grid;
  Device device = Device::kCpu;
  // Cone beam: block occupancy [bz, by, bx] and support box (see kernels::ConeRaySetup),
  // built on first use by PrepareCone.
  void PrepareCone();
  void BuildOccupancy();
  std::once_flag cone_once;
  std::vector<uint8_t> occupancy;
  int bx = 1, by = 1, bz = 1;
  bool occupied = false;
  float support_lo[3] = {0, 0, 0}, support_hi[3] = {0, 0, 0};
  // Shear-warp slice stacks per principal axis, built on first use.
  const internal::PaddedSlices& Slices(int axis);
  std::array<internal::PaddedSlices, 3> slices;
  std::array<std::once_flag, 3> slices_once;
  // CUDA backend: created on first use; calls on one volume are serialised by cuda_mutex.
  std::mutex cuda_mutex;
  internal::CudaVolume* cuda = nullptr;
  double last_kernel_ms = 0;

  State(const VolumeGrid& volume, bool copy);
  ~State();
};

namespace internal {

// Cone-beam parameters of one (view, pose) pair.
kernels::ConeRaySetup MakeConeRaySetup(const RenderVolume::State& volume, const ConeView& view,
                                       const double* pose, double step_voxels);

// What turns the rays' gradient sums of one (view, pose) pair into pose derivatives
// (kernels::ConeRayPoseGradient).
kernels::ConeRayPoseFrame MakeConeRayPoseFrame(const VolumeGrid& volume, const ConeView& view,
                                               const double* pose);

// Perspective shear-warp parameters of one (view, pose) pair (valid = 0 where the
// factorisation does not apply; see kernels::ConeShearSetup).
kernels::ConeShearSetup MakeConeShearSetup(const VolumeGrid& volume, const ConeView& view,
                                           const double* pose);

#if defined(FLUORO_WITH_CUDA)
int CudaDeviceCount();
// The device copies of `volume` (created on first use; the caller holds volume.cuda_mutex).
CudaVolume& GetCudaVolume(RenderVolume::State& volume);
void DestroyCudaVolume(CudaVolume* cuda);
size_t CudaVolumeBytes(const CudaVolume* cuda);
// Launchers (the caller holds volume.cuda_mutex); setups come from the shared host code.
// Shear-warp DRRs [n, height, width] of either factorisation (Setup: kernels::ShearWarpSetup
// or kernels::ConeShearSetup; setups without an intermediate image give zero images).
template <typename Setup>
void RenderShearWarpCuda(RenderVolume::State& volume, const Setup* setups, int n, int width,
                         int height, float* out, bool output_on_device);
void RenderConeDrrCuda(RenderVolume::State& volume, const kernels::ConeRaySetup* setups, int n,
                       int width, int height, float* out, const RenderOptions& options);
// The requests' pixels; setups: those of every pose of the requests with pixels, in order.
// frames: the pose frames at the setups' indices where requests want pose gradients, or
// nullptr (none does).
void RenderConePixelsCuda(RenderVolume::State& volume, const kernels::ConeRaySetup* setups,
                          const kernels::ConeRayPoseFrame* frames,
                          const ConePixelRequest* requests, int n, const RenderOptions& options);
void ProjectPointsCuda(bool cone, const ParallelCamera& camera, const ConeView* views,
                       const double* poses, const double* scales, int n, const double* points,
                       int m, double* out_xy, uint8_t* in_fov);
float* CudaMallocFloats(size_t count);
void CudaFreeFloats(float* p);
// Page-locked host memory for `count` floats (AllocateHostImages), or null when the images are
// too large for it or too much of it is alive.
std::shared_ptr<float> CudaPageLockedFloats(size_t count);
#endif

// Throws std::runtime_error unless the CUDA backend is built and a device is present.
void RequireCuda();

}  // namespace internal
}  // namespace fluororeg
