// DRR renderers and point projection: the public C++ API of the rendering core.
//
// Every function takes batches (n poses, or n view+pose pairs) so that dataset generation and
// registration pay no per-call overhead. Arrays are dense, C order, and owned by the caller.
// Backends: Device::kCpu runs on all cores (std::thread); Device::kCuda runs the same
// per-ray math in CUDA kernels and throws std::runtime_error when CUDA was not built or no
// device is usable. Invalid arguments throw std::invalid_argument naming the value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>

#include "fluororeg/geometry.h"

namespace fluororeg {

// A scalar volume: attenuation per mm (float32), data[k][j][i] holds voxel (i, j, k)
// (C order z-y-x). model_from_voxel maps voxel indices to the model frame (mm).
struct VolumeGrid {
  const float* data = nullptr;  // [nz, ny, nx]
  int nx = 0, ny = 0, nz = 0;
  Affine3<double> model_from_voxel{{1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0}};
};

enum class Device { kCpu = 0, kCuda = 1 };

// How RenderConeDrr computes whole cone-beam images.
//   kRayMarch: each ray marched at step_voxels through the trilinear interpolant (the
//     reference quality; the only method of RenderConePixels).
//   kShearWarp: perspective shear-warp (see kernels::ConeShearSetup): one bilinear sample per
//     slice and ray, accumulated slice by slice on an intermediate image that is then warped
//     to the intensifier; many times faster on the CPU, with about 1 % more error against a
//     fine line integral at full resolution (about the parallel-beam renderer's). step_voxels
//     is not used; stop_above is met (pixels above it hold their whole integral). Images whose
//     source or intensifier lies within the volume's slab of slices are ray-marched.
enum class ConeMethod { kRayMarch = 0, kShearWarp = 1 };

struct RenderOptions {
  Device device = Device::kCpu;
  int num_threads = 0;        // CPU backend: 0 = all hardware threads
  double step_voxels = 1.0;   // cone beam: ray-marching step, in voxel-index units along the ray
  // Cone beam: a ray stops marching once its line integral exceeds stop_above (its pixel then
  // holds a partial integral, still > stop_above): silhouettes (path > threshold) need no more,
  // and are the same as with the whole integrals, volumes being non-negative. Infinity: never.
  double stop_above = std::numeric_limits<double>::infinity();
  ConeMethod cone_method = ConeMethod::kRayMarch;  // RenderConeDrr (see ConeMethod)
  // CUDA backend, cone beam: sample the volume through a 3D texture with hardware trilinear
  // filtering (fast; weights rounded to 1/256, so values differ from the CPU by ~1e-3
  // relative) instead of the exact trilinear interpolation shared with the CPU backend.
  bool cuda_texture = true;
  // CUDA backend: `out` is device memory (see CudaAllocateFloats) and the images stay there.
  bool output_on_device = false;
};

// A volume prepared once for rendering, reused by any number of calls: a copy of the voxels,
// the block occupancy and support box of the cone-beam ray marcher, the padded slice stacks of
// the shear-warp renderer (built on first use per principal axis), and, for Device::kCuda, the
// device copies (linear memory, a 3D texture, slice stacks) and device work buffers that are
// kept and reused between calls. Thread-safe: concurrent calls on one RenderVolume are
// serialised on the CUDA backend and share the read-only CPU structures.
class RenderVolume {
 public:
  // Copies `volume` (validated); device = kCuda also uploads it now (throws when CUDA is
  // absent).
  explicit RenderVolume(const VolumeGrid& volume, Device device = Device::kCpu);
  ~RenderVolume();
  RenderVolume(RenderVolume&&) noexcept;
  RenderVolume& operator=(RenderVolume&&) noexcept;
  RenderVolume(const RenderVolume&) = delete;
  RenderVolume& operator=(const RenderVolume&) = delete;

  const VolumeGrid& grid() const;  // the copy (data owned by this object)
  Device device() const;           // where it was prepared (the CPU structures always exist)
  size_t HostBytes() const;        // memory held on the host
  size_t DeviceBytes() const;      // memory held on the CUDA device

  // Milliseconds the CUDA kernels of the last CUDA call on this volume took (events around
  // the kernels, transfers excluded); 0 before any CUDA call.
  double LastCudaKernelMs() const;

  // A RenderVolume over the caller's voxels without copying them: the caller keeps
  // volume.data alive and unchanged while it is used (the VolumeGrid entry points use it).
  static RenderVolume View(const VolumeGrid& volume);

  struct State;  // internal (cpp/src/render/render_internal.h)
  State& state() const { return *state_; }

 private:
  RenderVolume() = default;
  std::unique_ptr<State> state_;
};

// True when the CUDA backend was compiled in.
bool CudaBuilt();
// True when the CUDA backend was compiled in and a CUDA device is usable.
bool CudaAvailable();

// Parallel-beam DRRs by shear-warp factorisation.
//   poses  [n, 6] rad / mm: camera_from_model (theta_x, theta_y, theta_z, tau_x, tau_y, tau_z)
//   scales [n]    in-plane magnification (> 0)
//   out    [n, H, W] float32 line integrals of attenuation (dimensionless)
void RenderParallelDrr(const RenderVolume& volume, const ParallelCamera& camera,
                       const double* poses, const double* scales, int n, float* out,
                       const RenderOptions& options = {});
// The same on a volume prepared for this call only (kept for callers that render once).
void RenderParallelDrr(const VolumeGrid& volume, const ParallelCamera& camera,
                       const double* poses, const double* scales, int n, float* out,
                       const RenderOptions& options = {});

// Cone-beam DRRs by ray marching with trilinear interpolation, rays clipped to the volume box
// and empty blocks skipped, or by perspective shear-warp (options.cone_method). All views of
// one call share width and height.
//   views  [n] ConeView (world frame)
//   poses  [n, 6] rad / mm: world_from_model
//   out    [n, H, W] float32
void RenderConeDrr(const RenderVolume& volume, const ConeView* views, const double* poses,
                   int n, float* out, const RenderOptions& options = {});
void RenderConeDrr(const VolumeGrid& volume, const ConeView* views, const double* poses, int n,
                   float* out, const RenderOptions& options = {});

// Cone-beam line integrals at listed pixels of one view only (the intensity refinement renders
// its regions of interest this way), the same per-ray body as RenderConeDrr's kRayMarch
// (options.cone_method must be kRayMarch).
//   pixels [m] indices y * W + x into the view's W x H image
//   poses  [n, 6] rad / mm: world_from_model
//   out    [n, m] float32 (host memory; options.output_on_device is not taken)
void RenderConePixels(const RenderVolume& volume, const ConeView& view, const int32_t* pixels,
                      int m, const double* poses, int n, float* out,
                      const RenderOptions& options = {});

// One request of RenderConePixelsBatch: listed pixels of one view for some poses (the
// arguments of RenderConePixels).
struct ConePixelRequest {
  ConeView view{};
  const int32_t* pixels = nullptr;  // [num_pixels] indices y * W + x
  int num_pixels = 0;
  const double* poses = nullptr;    // [num_poses, 6] rad / mm: world_from_model
  int num_poses = 0;
  float* out = nullptr;             // [num_poses, num_pixels] float32, host memory
  // Optional (nullptr: none): [num_poses, 6, num_pixels] float32, host memory, the derivatives
  // of each value along the pose tangent (w_x, w_y, w_z rad: a rotation about the model origin,
  // world axes; dt_x, dt_y, dt_z mm: then a translation; world_from_model (R, tau) ->
  // (exp(w) R, tau + dt)), exact for the rendered sum of the trilinear interpolant up to the
  // samples' positions along the ray (the intensity refinement's analytic Jacobian). Needs
  // the exact sampler (options.cuda_texture false on CUDA) and no early stop (stop_above
  // infinite, the request's and the options'). Costs a third more than the plain render of the
  // same pixels (bench_render's pose_gradient_cost_ratio: 1.32 on 2 cores).
  float* pose_gradient = nullptr;
  // This request's rays stop once their integral exceeds it (with options.stop_above: the
  // smaller), as RenderOptions::stop_above: a silhouette (the refinement's region of interest)
  // needs no more. Infinite: whole rays (pose gradients need them).
  double stop_above = std::numeric_limits<double>::infinity();
};
// Many requests on one volume in one call, each giving what RenderConePixels gives for it (the
// same per-ray body, the same values). On CUDA they share one upload, one kernel launch, one
// download and one synchronisation: the refinement gathers the renders of all the frames it
// refines at once this way. RenderConePixels is its one-request case.
void RenderConePixelsBatch(const RenderVolume& volume, const ConePixelRequest* requests, int n,
                           const RenderOptions& options = {});

// Device memory for images that stay on the CUDA device (RenderOptions::output_on_device):
// `count` floats, freed when the last copy of the pointer goes. Throws std::runtime_error
// when CUDA is not built or no device is usable.
std::shared_ptr<float> CudaAllocateFloats(size_t count);

// Host memory for `count` floats of images a call on `device` writes (the `out` of the
// renderers). On Device::kCuda, page-locked memory when the images are small enough (up to
// 64 MiB, and up to 1 GiB of such images alive at once; freed blocks are kept for the next
// calls): the images then come back from the device by one copy straight into it instead of
// through a staging buffer. Otherwise, and on the CPU, ordinary memory. Uninitialised; freed
// when the last copy of the pointer goes.
std::shared_ptr<float> AllocateHostImages(Device device, size_t count);

// Landmark projection.
//   points [m, 3] mm, model frame;  out_xy [n, m, 2] pixels;  in_fov [n, m] (1 inside image)
void ProjectPointsParallel(const ParallelCamera& camera, const double* poses,
                           const double* scales, int n, const double* points, int m,
                           double* out_xy, uint8_t* in_fov, const RenderOptions& options = {});
void ProjectPointsCone(const ConeView* views, const double* poses, int n, const double* points,
                       int m, double* out_xy, uint8_t* in_fov, const RenderOptions& options = {});

// The finest detail each cone-beam image can show at the object, out [n] mm: the smaller pixel
// pitch of views [n] scaled back to the model origin of poses [n, 6] (pitch * source-to-origin
// depth / source-to-intensifier distance, the depth at least 1e-6 mm). The renderers' 'auto'
// level matches the volume to it.
void ConePixelsAtObject(const ConeView* views, const double* poses, int n, double* out);

// Validation shared by the entry points (throws std::invalid_argument).
void ValidateVolume(const VolumeGrid& volume);
void ValidateParallelCamera(const ParallelCamera& camera);
void ValidateConeView(const ConeView& view, int index);
void ValidatePoses(const double* poses, int n);

}  // namespace fluororeg
