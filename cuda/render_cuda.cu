// CUDA backend of the renderers: thin kernels over the shared per-ray math in
// fluororeg/render_kernels.h. Compiled only when FLUORO_WITH_CUDA is set; never run in CI
// (no GPU there), checked against the CPU backend on a GPU machine.
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "render/render_internal.h"

namespace fluororeg {
namespace internal {

namespace {

void Check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
  }
}

// Device buffer with RAII release.
template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t count = 0;
  explicit DeviceBuffer(size_t n) : count(n) {
    if (n) Check(cudaMalloc(&ptr, n * sizeof(T)), "cudaMalloc");
  }
  DeviceBuffer(const T* host, size_t n) : DeviceBuffer(n) {
    if (n) Check(cudaMemcpy(ptr, host, n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void ToHost(T* host) const {
    if (count) Check(cudaMemcpy(host, ptr, count * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  }
};

__global__ void ShearKernel(const kernels::ShearWarpSetup* setups, const long long* inter_offset,
                            const float* const* padded, float* inter, int n) {
  const int i = blockIdx.z;
  if (i >= n) return;
  const kernels::ShearWarpSetup s = setups[i];
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  const int q = blockIdx.y * blockDim.y + threadIdx.y;
  if (p >= s.inter_w || q >= s.inter_h) return;
  inter[inter_offset[i] + static_cast<long long>(q) * s.inter_w + p] =
      kernels::ShearPixel(s, padded[s.axis], p, q);
}

__global__ void WarpKernel(const kernels::ShearWarpSetup* setups, const long long* inter_offset,
                           const float* inter, float* out, int width, int height, int n) {
  const int i = blockIdx.z;
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  if (i >= n || x >= width || y >= height) return;
  const kernels::ShearWarpSetup& s = setups[i];
  out[(static_cast<long long>(i) * height + y) * width + x] =
      s.inter_h == 0 ? 0.f : kernels::WarpPixel(s, inter + inter_offset[i], x, y);
}

__global__ void ConeKernel(const kernels::ConeRaySetup* setups, const float* vol,
                           const uint8_t* occupancy, float* out, int width, int height, int n) {
  const int i = blockIdx.z;
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  if (i >= n || x >= width || y >= height) return;
  out[(static_cast<long long>(i) * height + y) * width + x] =
      kernels::ConeRayIntegral(setups[i], vol, occupancy, x, y);
}

__global__ void ProjectKernel(bool cone, ParallelCamera camera, const ConeView* views,
                              const double* poses, const double* scales, int n,
                              const double* points, int m, double* out_xy, uint8_t* in_fov) {
  const long long o = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= static_cast<long long>(n) * m) return;
  const int i = static_cast<int>(o / m), j = static_cast<int>(o % m);
  const Affine3<double> xf = AffineFromPose(poses + 6 * i);
  if (cone) {
    kernels::ProjectConePoint(views[i], xf, points + 3 * j, out_xy + 2 * o, in_fov + o);
  } else {
    kernels::ProjectParallelPoint(camera, xf, scales[i], points + 3 * j, out_xy + 2 * o,
                                  in_fov + o);
  }
}

dim3 Grid2D(int w, int h, int n, dim3 block) {
  return dim3((w + block.x - 1) / block.x, (h + block.y - 1) / block.y, n);
}

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

void RenderParallelDrrCuda(const VolumeGrid& volume, const ParallelCamera& camera,
                           const double* poses, const double* scales, int n, float* out) {
  std::vector<kernels::ShearWarpSetup> setups(n);
  bool needed[3] = {false, false, false};
  std::vector<long long> offset(n + 1, 0);
  int max_w = 0, max_h = 0;
  for (int i = 0; i < n; ++i) {
    setups[i] = MakeShearWarpSetup(volume, camera, poses + 6 * i, scales[i]);
    needed[setups[i].axis] = true;
    offset[i + 1] = offset[i] + static_cast<long long>(setups[i].inter_w) * setups[i].inter_h;
    max_w = std::max(max_w, setups[i].inter_w);
    max_h = std::max(max_h, setups[i].inter_h);
  }
  std::vector<std::unique_ptr<DeviceBuffer<float>>> padded_dev(3);
  const float* padded_ptr[3] = {nullptr, nullptr, nullptr};
  for (int c = 0; c < 3; ++c) {
    if (!needed[c]) continue;
    const PaddedSlices p = MakePaddedSlices(volume, c);
    padded_dev[c] = std::make_unique<DeviceBuffer<float>>(p.data.data(), p.data.size());
    padded_ptr[c] = padded_dev[c]->ptr;
  }
  DeviceBuffer<const float*> padded_table(padded_ptr, 3);
  DeviceBuffer<kernels::ShearWarpSetup> setups_dev(setups.data(), n);
  DeviceBuffer<long long> offset_dev(offset.data(), n + 1);
  DeviceBuffer<float> inter(std::max<long long>(offset[n], 1));
  DeviceBuffer<float> image(static_cast<size_t>(n) * camera.width * camera.height);
  const dim3 block(32, 8);
  if (max_w > 0 && max_h > 0) {
    ShearKernel<<<Grid2D(max_w, max_h, n, block), block>>>(setups_dev.ptr, offset_dev.ptr,
                                                           padded_table.ptr, inter.ptr, n);
    Check(cudaGetLastError(), "shear kernel launch");
  }
  WarpKernel<<<Grid2D(camera.width, camera.height, n, block), block>>>(
      setups_dev.ptr, offset_dev.ptr, inter.ptr, image.ptr, camera.width, camera.height, n);
  Check(cudaGetLastError(), "warp kernel launch");
  Check(cudaDeviceSynchronize(), "parallel-beam DRR");
  image.ToHost(out);
}

void RenderConeDrrCuda(const VolumeGrid& volume, const ConeView* views, const double* poses,
                       int n, float* out, double step_voxels) {
  int bx, by, bz;
  const std::vector<uint8_t> occupancy = MakeOccupancy(volume, &bx, &by, &bz);
  std::vector<kernels::ConeRaySetup> setups(n);
  for (int i = 0; i < n; ++i) setups[i] = MakeConeRaySetup(volume, views[i], poses + 6 * i, step_voxels);
  const size_t n_vox = static_cast<size_t>(volume.nx) * volume.ny * volume.nz;
  DeviceBuffer<float> vol(volume.data, n_vox);
  DeviceBuffer<uint8_t> occ(occupancy.data(), occupancy.size());
  DeviceBuffer<kernels::ConeRaySetup> setups_dev(setups.data(), n);
  const int W = views[0].width, H = views[0].height;
  DeviceBuffer<float> image(static_cast<size_t>(n) * W * H);
  const dim3 block(16, 16);
  ConeKernel<<<Grid2D(W, H, n, block), block>>>(setups_dev.ptr, vol.ptr, occ.ptr, image.ptr, W,
                                                H, n);
  Check(cudaGetLastError(), "cone kernel launch");
  Check(cudaDeviceSynchronize(), "cone-beam DRR");
  image.ToHost(out);
}

void ProjectPointsCuda(bool cone, const ParallelCamera& camera, const ConeView* views,
                       const double* poses, const double* scales, int n, const double* points,
                       int m, double* out_xy, uint8_t* in_fov) {
  const long long total = static_cast<long long>(n) * m;
  if (total == 0) return;
  DeviceBuffer<ConeView> views_dev(cone ? views : nullptr, cone ? n : 0);
  DeviceBuffer<double> poses_dev(poses, 6 * static_cast<size_t>(n));
  DeviceBuffer<double> scales_dev(cone ? nullptr : scales, cone ? 0 : n);
  DeviceBuffer<double> points_dev(points, 3 * static_cast<size_t>(m));
  DeviceBuffer<double> xy(2 * static_cast<size_t>(total));
  DeviceBuffer<uint8_t> fov(static_cast<size_t>(total));
  const int threads = 256;
  ProjectKernel<<<static_cast<unsigned>((total + threads - 1) / threads), threads>>>(
      cone, camera, views_dev.ptr, poses_dev.ptr, scales_dev.ptr, n, points_dev.ptr, m, xy.ptr,
      fov.ptr);
  Check(cudaGetLastError(), "projection kernel launch");
  Check(cudaDeviceSynchronize(), "point projection");
  xy.ToHost(out_xy);
  fov.ToHost(in_fov);
}

}  // namespace internal
}  // namespace fluororeg
