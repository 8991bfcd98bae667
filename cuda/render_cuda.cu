// CUDA backend of the renderers (about 500 lines: the launchers of all renderers and the device
// side of RenderVolume belong together): thin grid-stride launchers over the kernel bodies in
// fluororeg/render_kernels.h (the same bodies the CPU backend runs in ParallelFor), and the
// device side of RenderVolume (device copies, a 3D texture and work buffers kept between
// calls). Compiled only when FLUORO_WITH_CUDA is set; never run in CI (no GPU there), checked
// against the CPU backend on a GPU machine (tests -k cuda, benchmarks/gpu_check.sh).
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "fluororeg/limits.h"
#include "fluororeg/parallel.h"
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

// Device buffer that grows on demand and is kept between calls.
template <typename T>
struct DeviceScratch {
  T* ptr = nullptr;
  size_t capacity = 0;  // elements
  DeviceScratch() = default;
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  ~DeviceScratch() { Release(); }
  T* Reserve(size_t n) {
    if (n > capacity) {
      if (ptr) cudaFree(ptr);
      ptr = nullptr;
      capacity = 0;
      Check(cudaMalloc(&ptr, limits::CheckedMul(std::max<size_t>(n, 1), sizeof(T), "work buffer")),
            "cudaMalloc (work buffer)");
      capacity = n;
    }
    return ptr;
  }
  void Release() {
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    capacity = 0;
  }
  size_t Bytes() const { return capacity * sizeof(T); }
};

// Page-locked host staging buffer (asynchronous uploads of the per-image setups).
struct PinnedScratch {
  void* ptr = nullptr;
  size_t capacity = 0;  // bytes
  PinnedScratch() = default;
  PinnedScratch(const PinnedScratch&) = delete;
  PinnedScratch& operator=(const PinnedScratch&) = delete;
  ~PinnedScratch() { Release(); }
  void* Reserve(size_t bytes) {
    if (bytes > capacity) {
      if (ptr) cudaFreeHost(ptr);
      ptr = nullptr;
      capacity = 0;
      Check(cudaMallocHost(&ptr, std::max<size_t>(bytes, 64)), "cudaMallocHost");
      capacity = bytes;
    }
    return ptr;
  }
  void Release() {
    if (ptr) cudaFreeHost(ptr);
    ptr = nullptr;
    capacity = 0;
  }
};

// The volume's trilinear interpolant by the texture unit (weights in 1/256 steps).
struct TextureSampler {
  cudaTextureObject_t tex;
  FLUORO_HD float operator()(float x, float y, float z) const {
#if defined(__CUDA_ARCH__)
    return tex3D<float>(tex, x + 0.5f, y + 0.5f, z + 0.5f);  // texel centres at +0.5
#else
    (void)x, (void)y, (void)z;
    return 0.f;  // device only
#endif
  }
};

struct SliceTable {
  kernels::SliceStack axis[3];  // device pointers (null for axes not uploaded)
};

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `total` elements (any count: the loop covers the rest).
unsigned BlocksFor(long long total) {
  const long long blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::max<long long>(1, std::min<long long>(blocks, 1 << 20)));
}

#define FLUORO_GRID_STRIDE(idx, total)                                                       \
  for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;      \
       idx < (total); idx += static_cast<long long>(blockDim.x) * gridDim.x)

// Columns of the intermediate image per thread of the shear kernel (registers; the per-slice
// offsets and row checks are shared by the columns).
constexpr int kShearColumns = 4;

// One thread per kShearColumns intermediate pixels of a row, for every image (intermediate
// images padded to max_w x max_h); Setup: either factorisation.
template <typename Setup>
__global__ void ShearKernel(const Setup* setups, const long long* offset,
                            int n, int max_w, int max_h, SliceTable slices, float* inter) {
  const int cols = (max_w + kShearColumns - 1) / kShearColumns;
  const long long per_pose = static_cast<long long>(cols) * max_h;
  FLUORO_GRID_STRIDE(idx, per_pose * n) {
    const int i = static_cast<int>(idx / per_pose);
    const long long r = idx - i * per_pose;
    const int q = static_cast<int>(r / cols);
    const int p0 = static_cast<int>(r - static_cast<long long>(q) * cols) * kShearColumns;
    const Setup& s = setups[i];
    if (p0 >= s.inter_w || q >= s.inter_h) continue;
    kernels::ShearColumns<kShearColumns>(s, slices.axis[s.axis], p0, q,
                                         inter + offset[i] + static_cast<long long>(q) * s.inter_w + p0);
  }
}

// One thread per output pixel.
template <typename Setup>
__global__ void WarpKernel(const Setup* setups, const long long* offset,
                           const float* inter, float* out, int width, int height, int n) {
  const long long per_image = static_cast<long long>(width) * height;
  FLUORO_GRID_STRIDE(idx, per_image * n) {
    const int i = static_cast<int>(idx / per_image);
    const long long r = idx - i * per_image;
    const int y = static_cast<int>(r / width), x = static_cast<int>(r - static_cast<long long>(y) * width);
    const Setup& s = setups[i];
    out[idx] = s.inter_h == 0 ? 0.f : kernels::WarpPixel(s, inter + offset[i], x, y);
  }
}

// PARTS threads per pixel (consecutive lanes, each a run of the ray's samples, summed by warp
// shuffles), the pixels of a block on an 8-wide tile (neighbouring rays share the texture
// cache). Every lane of a warp runs the same iterations (totals are multiples of kThreads).
template <typename Sampler, int PARTS>
__global__ void ConeKernel(const kernels::ConeRaySetup* setups, Sampler sampler,
                           const uint8_t* occupancy, float* out, int width, int height, int n) {
  constexpr int kRays = kThreads / PARTS, TW = 8, TH = kRays / TW;
  const int tiles_x = (width + TW - 1) / TW, tiles_y = (height + TH - 1) / TH;
  const long long per_image = static_cast<long long>(tiles_x) * tiles_y * kThreads;
  FLUORO_GRID_STRIDE(idx, per_image * n) {
    const int i = static_cast<int>(idx / per_image);
    const long long r = idx - i * per_image;
    const int tile = static_cast<int>(r / kThreads), within = static_cast<int>(r % kThreads);
    const int ray = within / PARTS, part = within % PARTS;
    const int x = (tile % tiles_x) * TW + ray % TW, y = (tile / tiles_x) * TH + ray / TW;
    const bool inside = x < width && y < height;
    float v = inside ? kernels::ConeRayIntegral(setups[i], sampler, occupancy, x, y, part, PARTS)
                     : 0.f;
    for (int offset = PARTS / 2; offset > 0; offset /= 2) {
      v += __shfl_down_sync(0xffffffffu, v, offset, PARTS);
    }
    if (inside && part == 0) out[(static_cast<long long>(i) * height + y) * width + x] = v;
  }
}

// Threads per ray for `rays` rays in one launch: enough threads to fill the device. One H100
// (kernel times of ConeKernel, texture sampler, measured with the occupancy read of 2fc0124,
// reverted since for its cost in large batches): one 200 x 200 image 137 / 640 / 62 / 64 us in
// 1 / 2 / 4 / 8 parts, 256 x 256 139 / 507 / 92 / 90, 512 x 512 201 / 1142 / 252 / 304, eight
// 128 x 128 175 / 1056 / 172 / 184. Two parts were 4-6 times slower than any other count
// (unexplained: ncu showed 3.7 of 32 lanes active on average, against 17 with four), so they
// are never used.
int ConeRayParts(long long rays) {
  if (rays >= (1 << 18)) return 1;
  return rays >= (1 << 15) ? 4 : 8;
}

template <typename Sampler>
void LaunchCone(int parts, unsigned blocks, cudaStream_t stream, const kernels::ConeRaySetup* setups,
                Sampler sampler, const uint8_t* occupancy, float* out, int width, int height,
                int n) {
  switch (parts) {
    case 1:
      ConeKernel<Sampler, 1><<<blocks, kThreads, 0, stream>>>(setups, sampler, occupancy, out,
                                                              width, height, n);
      break;
    case 4:
      ConeKernel<Sampler, 4><<<blocks, kThreads, 0, stream>>>(setups, sampler, occupancy, out,
                                                              width, height, n);
      break;
    default:
      ConeKernel<Sampler, 8><<<blocks, kThreads, 0, stream>>>(setups, sampler, occupancy, out,
                                                              width, height, n);
  }
}

// Listed pixels of RenderConePixelsBatch: per setup (one pose of one request) where its pixels
// and values lie; per block, a tile of kThreads consecutive pixels of one setup.
struct PixelJob {
  long long pixels;  // first entry in the concatenated pixel lists
  long long out;     // first entry in the concatenated outputs
  long long grad;    // first entry of its [6, count] pose gradients in the outputs (-1: none)
  int count;         // pixels of the request
  int width;         // image width of the request's view
};
struct PixelTile {
  int setup;  // index into setups and jobs
  int first;  // first pixel of the tile within the request's list
};

// One block per tile, one thread per pixel of it. kGradient: the tiles of jobs with pose
// gradients (frames: the pose frames at the setups' indices).
template <typename Sampler, bool kGradient = false>
__global__ void ConePixelsKernel(const kernels::ConeRaySetup* setups, const PixelJob* jobs,
                                 const PixelTile* tiles, long long n_tiles, Sampler sampler,
                                 const uint8_t* occupancy, const int32_t* pixels, float* out,
                                 const kernels::ConeRayPoseFrame* frames = nullptr) {
  for (long long t = blockIdx.x; t < n_tiles; t += gridDim.x) {
    const PixelTile tile = tiles[t];
    const PixelJob job = jobs[tile.setup];
    const int i = tile.first + static_cast<int>(threadIdx.x);
    if (i >= job.count) continue;
    const int32_t p = pixels[job.pixels + i];
    const int x = p % job.width, y = p / job.width;
    if constexpr (kGradient) {
      float sums[7], d[6];
      out[job.out + i] = kernels::ConeRayIntegral<Sampler, true>(setups[tile.setup], sampler,
                                                                 occupancy, x, y, 0, 1, sums);
      kernels::ConeRayPoseGradient(setups[tile.setup], frames[tile.setup], x, y, sums, d);
      for (int j = 0; j < 6; ++j) out[job.grad + static_cast<long long>(j) * job.count + i] = d[j];
    } else {
      out[job.out + i] = kernels::ConeRayIntegral(setups[tile.setup], sampler, occupancy, x, y);
    }
  }
}

__global__ void ProjectKernel(bool cone, ParallelCamera camera, const ConeView* views,
                              const double* poses, const double* scales, int n,
                              const double* points, int m, double* out_xy, uint8_t* in_fov) {
  FLUORO_GRID_STRIDE(o, static_cast<long long>(n) * m) {
    const int i = static_cast<int>(o / m), j = static_cast<int>(o % m);
    const Affine3<double> xf = AffineFromPose(poses + 6 * i);
    if (cone) {
      kernels::ProjectConePoint(views[i], xf, points + 3 * j, out_xy + 2 * o, in_fov + o);
    } else {
      kernels::ProjectParallelPoint(camera, xf, scales[i], points + 3 * j, out_xy + 2 * o,
                                    in_fov + o);
    }
  }
}

// Host images per chunk when the output goes back to the host (bounds the device buffer).
constexpr size_t kMaxChunkFloats = size_t(64) << 20;  // 256 MiB
// Outputs up to this size come down through a page-locked buffer (copies to pageable memory
// are staged by the driver, slower).
constexpr size_t kMaxPinnedBytes = size_t(64) << 20;

}  // namespace

// ---------------------------------------------------------------------------------------
// Device side of a RenderVolume.
struct CudaVolume {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  cudaEvent_t default_stream_mark = nullptr;  // see AfterDefaultStream
  float* voxels = nullptr;  // [nz, ny, nx] linear copy (exact trilinear, the CPU's sampler)
  cudaArray_t array = nullptr;
  cudaTextureObject_t texture = 0;  // hardware trilinear filtering, zero outside
  uint8_t* occupancy = nullptr;
  float* slices[3] = {nullptr, nullptr, nullptr};
  int64_t* stretch_offset[3] = {nullptr, nullptr, nullptr};
  int32_t* stretches[3] = {nullptr, nullptr, nullptr};
  size_t fixed_bytes = 0;
  DeviceScratch<kernels::ShearWarpSetup> shear_setups;
  DeviceScratch<kernels::ConeShearSetup> cone_shear_setups;
  DeviceScratch<kernels::ConeRaySetup> cone_setups;
  DeviceScratch<kernels::ShearWarpSetup>& SetupsFor(const kernels::ShearWarpSetup*) {
    return shear_setups;
  }
  DeviceScratch<kernels::ConeShearSetup>& SetupsFor(const kernels::ConeShearSetup*) {
    return cone_shear_setups;
  }
  DeviceScratch<long long> offsets;
  DeviceScratch<float> inter, images;
  DeviceScratch<uint8_t> tables;  // RenderConePixelsBatch's setups, jobs, tiles and pixel lists
  PinnedScratch staging;      // setups on their way up
  PinnedScratch host_images;  // images on their way down (see HostImages)

  ~CudaVolume() {
    if (texture) cudaDestroyTextureObject(texture);
    if (array) cudaFreeArray(array);
    cudaFree(voxels);
    cudaFree(occupancy);
    for (int c = 0; c < 3; ++c) {
      cudaFree(slices[c]);
      cudaFree(stretch_offset[c]);
      cudaFree(stretches[c]);
    }
    if (default_stream_mark) cudaEventDestroy(default_stream_mark);
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    if (stream) cudaStreamDestroy(stream);
  }

  // Asynchronous upload through the pinned staging buffer (one at a time: the stream is
  // synchronised at the end of every call before the buffer is reused).
  template <typename T>
  void Upload(T* device, const T* host, size_t count) {
    void* stage = staging.Reserve(count * sizeof(T));
    std::copy(host, host + count, static_cast<T*>(stage));
    Check(cudaMemcpyAsync(device, stage, count * sizeof(T), cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync (setups)");
  }
};

CudaVolume& GetCudaVolume(RenderVolume::State& volume) {
  if (volume.cuda) return *volume.cuda;
  volume.PrepareCone();
  auto cv = std::make_unique<CudaVolume>();
  const VolumeGrid& g = volume.grid;
  Check(cudaStreamCreateWithFlags(&cv->stream, cudaStreamNonBlocking), "cudaStreamCreate");
  Check(cudaEventCreate(&cv->start), "cudaEventCreate");
  Check(cudaEventCreate(&cv->stop), "cudaEventCreate");
  Check(cudaEventCreateWithFlags(&cv->default_stream_mark, cudaEventDisableTiming),
        "cudaEventCreate");
  const size_t n_vox = limits::CheckedProduct(
      {static_cast<size_t>(g.nx), static_cast<size_t>(g.ny), static_cast<size_t>(g.nz)}, "volume");
  Check(cudaMalloc(&cv->voxels, limits::CheckedMul(n_vox, sizeof(float), "volume bytes")),
        "cudaMalloc (volume)");
  Check(cudaMemcpy(cv->voxels, g.data, n_vox * sizeof(float), cudaMemcpyHostToDevice),
        "cudaMemcpy (volume)");
  Check(cudaMalloc(&cv->occupancy, volume.occupancy.size()), "cudaMalloc (occupancy)");
  Check(cudaMemcpy(cv->occupancy, volume.occupancy.data(), volume.occupancy.size(),
                   cudaMemcpyHostToDevice),
        "cudaMemcpy (occupancy)");
  const cudaChannelFormatDesc desc = cudaCreateChannelDesc<float>();
  const cudaExtent extent = make_cudaExtent(g.nx, g.ny, g.nz);
  Check(cudaMalloc3DArray(&cv->array, &desc, extent), "cudaMalloc3DArray (volume texture)");
  cudaMemcpy3DParms copy = {};
  copy.srcPtr = make_cudaPitchedPtr(const_cast<float*>(g.data), g.nx * sizeof(float), g.nx, g.ny);
  copy.dstArray = cv->array;
  copy.extent = extent;
  copy.kind = cudaMemcpyHostToDevice;
  Check(cudaMemcpy3D(&copy), "cudaMemcpy3D (volume texture)");
  cudaResourceDesc res = {};
  res.resType = cudaResourceTypeArray;
  res.res.array.array = cv->array;
  cudaTextureDesc tex = {};
  for (int c = 0; c < 3; ++c) tex.addressMode[c] = cudaAddressModeBorder;
  tex.filterMode = cudaFilterModeLinear;
  tex.readMode = cudaReadModeElementType;
  tex.normalizedCoords = 0;
  Check(cudaCreateTextureObject(&cv->texture, &res, &tex, nullptr), "cudaCreateTextureObject");
  cv->fixed_bytes = 2 * n_vox * sizeof(float) + volume.occupancy.size();
  volume.cuda = cv.release();
  return *volume.cuda;
}

void DestroyCudaVolume(CudaVolume* cuda) { delete cuda; }

size_t CudaVolumeBytes(const CudaVolume* cv) {
  if (!cv) return 0;
  return cv->fixed_bytes + cv->shear_setups.Bytes() + cv->cone_shear_setups.Bytes() +
         cv->cone_setups.Bytes() +
         cv->offsets.Bytes() + cv->inter.Bytes() + cv->images.Bytes() + cv->tables.Bytes();
}

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

namespace {

// Images kept on the device come from the device's default memory pool, in the order of the
// legacy default stream (the one torch and most callers use): no device-wide synchronisation
// per image batch, as cudaMalloc / cudaFree have. The pool keeps up to kPoolKeepBytes of freed
// memory for the next batches instead of handing it back at every synchronisation. Devices
// without memory pools use cudaMalloc / cudaFree.
constexpr uint64_t kPoolKeepBytes = uint64_t(1) << 30;

bool UsePool() {
  static const bool use = [] {
    int device = 0, pools = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess ||
        !pools) {
      cudaGetLastError();
      return false;
    }
    cudaMemPool_t pool;
    uint64_t keep = kPoolKeepBytes;
    Check(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
    Check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
          "cudaMemPoolSetAttribute");
    return true;
  }();
  return use;
}

// Work on the volume's stream that writes images kept on the device waits for what the legacy
// default stream holds (their allocation, and whatever the caller queued there before).
void AfterDefaultStream(CudaVolume& cv) {
  Check(cudaEventRecord(cv.default_stream_mark, cudaStreamLegacy), "cudaEventRecord");
  Check(cudaStreamWaitEvent(cv.stream, cv.default_stream_mark, 0), "cudaStreamWaitEvent");
}

// Page-locked blocks for images that go back to the host (CudaPageLockedFloats). cudaMallocHost
// costs far more than a small render, so freed blocks are kept (up to kKeepBytes) for the next
// calls; a block serves requests from half its size up. At most kLiveBytes are handed out at
// once: page-locked memory is taken from what the system can page.
class PageLockedCache {
 public:
  static constexpr size_t kKeepBytes = size_t(256) << 20;
  static constexpr size_t kLiveBytes = size_t(1) << 30;

  // The cache itself is never destroyed (blocks handed out may come back during exit); at exit,
  // before the CUDA runtime goes (it was started before the first block), the kept blocks are
  // freed and blocks that come back later are freed at once.
  static PageLockedCache& Get() {
    static PageLockedCache* cache = new PageLockedCache;
    static struct AtExit {
      ~AtExit() { cache->Close(); }
    } at_exit;
    return *cache;
  }

  // A block of at least `bytes` (its size in *size), or null.
  void* Take(size_t bytes, size_t* size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (bytes > kMaxPinnedBytes || live_ + bytes > kLiveBytes) return nullptr;
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first / 2 <= bytes) {
        void* p = it->second;
        *size = it->first;
        kept_ -= it->first;
        live_ += it->first;
        free_.erase(it);
        return p;
      }
      live_ += bytes;
    }
    void* p = nullptr;
    if (cudaMallocHost(&p, bytes) != cudaSuccess) {
      cudaGetLastError();
      std::lock_guard<std::mutex> lock(mutex_);
      live_ -= bytes;
      return nullptr;
    }
    *size = bytes;
    return p;
  }

  void Give(void* p, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_ -= size;
      if (!closed_ && kept_ + size <= kKeepBytes) {
        free_.emplace(size, p);
        kept_ += size;
        return;
      }
    }
    cudaFreeHost(p);
  }

 private:
  void Close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    for (const auto& block : free_) cudaFreeHost(block.second);
    free_.clear();
    kept_ = 0;
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> free_;  // size (bytes) -> block
  size_t kept_ = 0, live_ = 0;         // bytes
  bool closed_ = false;
};

}  // namespace

std::shared_ptr<float> CudaPageLockedFloats(size_t count) {
  if (CudaDeviceCount() == 0) return nullptr;
  size_t size = 0;
  const size_t bytes = limits::CheckedMul(std::max<size_t>(count, 1), sizeof(float), "images");
  void* p = PageLockedCache::Get().Take(bytes, &size);
  if (!p) return nullptr;
  return std::shared_ptr<float>(static_cast<float*>(p),
                                [size](float* q) { PageLockedCache::Get().Give(q, size); });
}

float* CudaMallocFloats(size_t count) {
  float* p = nullptr;
  const size_t bytes = limits::CheckedMul(std::max<size_t>(count, 1), sizeof(float), "images");
  if (UsePool()) {
    Check(cudaMallocAsync(reinterpret_cast<void**>(&p), bytes, cudaStreamLegacy),
          "cudaMallocAsync (images)");
  } else {
    Check(cudaMalloc(&p, bytes), "cudaMalloc (images)");
  }
  return p;
}

void CudaFreeFloats(float* p) {
  if (UsePool()) {
    cudaFreeAsync(p, cudaStreamLegacy);
  } else {
    cudaFree(p);
  }
}

namespace {

// A host vector's copy in new device memory (at least one element, so that the pointer is set).
template <typename T>
T* UploadVector(const std::vector<T>& v, const char* what) {
  T* d = nullptr;
  Check(cudaMalloc(&d, std::max<size_t>(v.size(), 1) * sizeof(T)), what);
  if (!v.empty()) {
    Check(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), what);
  }
  return d;
}

// The slice stacks of one principal axis on the device (uploaded on first use).
void EnsureSlices(RenderVolume::State& volume, CudaVolume& cv, int axis) {
  if (cv.slices[axis]) return;
  const PaddedSlices& p = volume.Slices(axis);
  cv.slices[axis] = UploadVector(p.data, "slices upload");
  cv.stretch_offset[axis] = UploadVector(p.stretch_offset, "stretches upload");
  cv.stretches[axis] = UploadVector(p.stretches, "stretches upload");
  cv.fixed_bytes += p.data.size() * sizeof(float) + p.stretch_offset.size() * sizeof(int64_t) +
                    p.stretches.size() * sizeof(int32_t);
}

bool IsPageLocked(const void* p) {
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeHost;
}

// Where the images of a call to the host are copied by the stream: `out` itself when it is
// page-locked (AllocateHostImages) or too large for the staging buffer, else the volume's
// page-locked staging buffer (then CopyOut moves them to `out` after the stream is
// synchronised). `out` may be null (the caller then copies from the staging buffer itself, or
// from its own buffer when null comes back).
float* HostImages(CudaVolume& cv, float* out, size_t count) {
  if (count * sizeof(float) > kMaxPinnedBytes || (out != nullptr && IsPageLocked(out))) return out;
  return static_cast<float*>(cv.host_images.Reserve(count * sizeof(float)));
}


void CopyOut(const float* staged, float* out, size_t count) {
  if (staged != out) std::copy(staged, staged + count, out);
}

// Events around the kernels of one call; the stream is synchronised before returning.
void FinishCall(RenderVolume::State& volume, CudaVolume& cv, const char* what) {
  Check(cudaStreamSynchronize(cv.stream), what);
  float ms = 0.f;
  Check(cudaEventElapsedTime(&ms, cv.start, cv.stop), "cudaEventElapsedTime");
  volume.last_kernel_ms = ms;
}

}  // namespace

template <typename Setup>
void RenderShearWarpCuda(RenderVolume::State& volume, const Setup* setups, int n, int width,
                         int height, float* out, bool output_on_device) {
  CudaVolume& cv = GetCudaVolume(volume);
  SliceTable table{};
  for (int i = 0; i < n; ++i) {
    if (setups[i].inter_h > 0) EnsureSlices(volume, cv, setups[i].axis);
  }
  for (int c = 0; c < 3; ++c) {
    table.axis[c] = {cv.slices[c], cv.stretch_offset[c], cv.stretches[c]};
  }
  const long long image_size = static_cast<long long>(width) * height;
  // Chunks of images whose intermediate and output images fit the work buffers.
  std::vector<long long> offset(n + 1, 0);
  for (int i = 0; i < n; ++i) {
    offset[i + 1] = offset[i] + static_cast<long long>(setups[i].inter_w) * setups[i].inter_h;
  }
  Setup* d_setups = cv.SetupsFor(setups).Reserve(n);
  cv.Upload(d_setups, setups, n);
  const size_t total = limits::CheckedMul(static_cast<size_t>(n), image_size, "images");
  float* host = output_on_device ? nullptr : HostImages(cv, out, total);
  if (output_on_device) AfterDefaultStream(cv);
  Check(cudaEventRecord(cv.start, cv.stream), "cudaEventRecord");
  for (int c0 = 0; c0 < n;) {
    int c1 = c0 + 1;
    while (c1 < n && (offset[c1 + 1] - offset[c0]) + (c1 + 1 - c0) * image_size <=
                         static_cast<long long>(kMaxChunkFloats)) {
      ++c1;
    }
    const int nc = c1 - c0;
    std::vector<long long> local(nc + 1);
    int max_w = 0, max_h = 0;
    for (int i = 0; i <= nc; ++i) local[i] = offset[c0 + i] - offset[c0];
    for (int i = c0; i < c1; ++i) {
      max_w = std::max(max_w, setups[i].inter_w);
      max_h = std::max(max_h, setups[i].inter_h);
    }
    long long* d_offset = cv.offsets.Reserve(nc + 1);
    Check(cudaMemcpyAsync(d_offset, local.data(), (nc + 1) * sizeof(long long),
                          cudaMemcpyHostToDevice, cv.stream),
          "cudaMemcpyAsync (offsets)");
    float* inter = cv.inter.Reserve(std::max<long long>(local[nc], 1));
    float* img = output_on_device ? out + c0 * image_size : cv.images.Reserve(nc * image_size);
    if (max_w > 0 && max_h > 0) {
      const long long total =
          static_cast<long long>((max_w + kShearColumns - 1) / kShearColumns) * max_h * nc;
      ShearKernel<<<BlocksFor(total), kThreads, 0, cv.stream>>>(d_setups + c0, d_offset, nc,
                                                                 max_w, max_h, table, inter);
      Check(cudaGetLastError(), "shear kernel launch");
    }
    WarpKernel<<<BlocksFor(nc * image_size), kThreads, 0, cv.stream>>>(
        d_setups + c0, d_offset, inter, img, width, height, nc);
    Check(cudaGetLastError(), "warp kernel launch");
    if (!output_on_device) {
      Check(cudaMemcpyAsync(host + c0 * image_size, img, nc * image_size * sizeof(float),
                            cudaMemcpyDeviceToHost, cv.stream),
            "cudaMemcpyAsync (images)");
    }
    // `local` is read by the stream: wait before it goes (chunks are rare).
    if (c1 < n) Check(cudaStreamSynchronize(cv.stream), "shear-warp DRR chunk");
    c0 = c1;
  }
  Check(cudaEventRecord(cv.stop, cv.stream), "cudaEventRecord");
  FinishCall(volume, cv, "shear-warp DRR");
  if (!output_on_device) CopyOut(host, out, total);
}
template void RenderShearWarpCuda(RenderVolume::State&, const kernels::ShearWarpSetup*, int, int,
                                  int, float*, bool);
template void RenderShearWarpCuda(RenderVolume::State&, const kernels::ConeShearSetup*, int, int,
                                  int, float*, bool);

void RenderConeDrrCuda(RenderVolume::State& volume, const kernels::ConeRaySetup* setups, int n,
                       int width, int height, float* out, const RenderOptions& options) {
  CudaVolume& cv = GetCudaVolume(volume);
  const long long image_size = static_cast<long long>(width) * height;
  kernels::ConeRaySetup* d_setups = cv.cone_setups.Reserve(n);
  cv.Upload(d_setups, setups, n);
  const size_t total = limits::CheckedMul(static_cast<size_t>(n), image_size, "images");
  float* host = options.output_on_device ? nullptr : HostImages(cv, out, total);
  if (options.output_on_device) AfterDefaultStream(cv);
  const int chunk = static_cast<int>(
      std::max<long long>(1, std::min<long long>(n, kMaxChunkFloats / image_size)));
  const VolumeGrid& g = volume.grid;
  Check(cudaEventRecord(cv.start, cv.stream), "cudaEventRecord");
  for (int c0 = 0; c0 < n; c0 += chunk) {
    const int nc = std::min(chunk, n - c0);
    float* img = options.output_on_device ? out + c0 * image_size
                                          : cv.images.Reserve(static_cast<size_t>(nc) * image_size);
    const int parts = ConeRayParts(static_cast<long long>(nc) * image_size);
    const int tile_h = kThreads / parts / 8;
    const long long tiles =
        static_cast<long long>((width + 7) / 8) * ((height + tile_h - 1) / tile_h);
    const unsigned blocks = BlocksFor(tiles * kThreads * nc);
    if (options.cuda_texture) {
      LaunchCone(parts, blocks, cv.stream, d_setups + c0, TextureSampler{cv.texture},
                 cv.occupancy, img, width, height, nc);
    } else {
      LaunchCone(parts, blocks, cv.stream, d_setups + c0,
                 kernels::ArraySampler{cv.voxels, g.nx, g.ny, g.nz}, cv.occupancy, img, width,
                 height, nc);
    }
    Check(cudaGetLastError(), "cone kernel launch");
    if (!options.output_on_device) {
      Check(cudaMemcpyAsync(host + c0 * image_size, img, nc * image_size * sizeof(float),
                            cudaMemcpyDeviceToHost, cv.stream),
            "cudaMemcpyAsync (images)");
    }
  }
  Check(cudaEventRecord(cv.stop, cv.stream), "cudaEventRecord");
  FinishCall(volume, cv, "cone-beam DRR");
  if (!options.output_on_device) CopyOut(host, out, total);
}

void RenderConePixelsCuda(RenderVolume::State& volume, const kernels::ConeRaySetup* setups,
                          const kernels::ConeRayPoseFrame* frames,
                          const ConePixelRequest* requests, int n, const RenderOptions& options) {
  CudaVolume& cv = GetCudaVolume(volume);
  // The tables of the call, packed into one page-locked block and uploaded by one copy. The
  // tiles of jobs with pose gradients come after the others (a launch of their own).
  std::vector<PixelJob> jobs;
  std::vector<PixelTile> tiles, gradient_tiles;
  // Each request's first entries; request_grad: of its [num_poses, 6, num_pixels] gradients.
  std::vector<long long> request_out(n, 0), request_pixels(n, 0), request_grad(n, -1);
  long long n_pixels = 0, n_out = 0;
  for (int r = 0; r < n; ++r) {
    const ConePixelRequest& q = requests[r];
    request_pixels[r] = n_pixels;
    if (q.num_pixels == 0) continue;
    request_out[r] = n_out;
    n_out += static_cast<long long>(q.num_poses) * q.num_pixels;
    if (q.pose_gradient) {
      request_grad[r] = n_out;
      n_out += 6LL * q.num_poses * q.num_pixels;
    }
    for (int k = 0; k < q.num_poses; ++k) {
      const int setup = static_cast<int>(jobs.size());
      const long long out = request_out[r] + static_cast<long long>(k) * q.num_pixels;
      const long long grad = q.pose_gradient ? request_grad[r] + 6LL * k * q.num_pixels : -1;
      jobs.push_back({n_pixels, out, grad, q.num_pixels, q.view.width});
      auto& list = q.pose_gradient ? gradient_tiles : tiles;
      for (int first = 0; first < q.num_pixels; first += kThreads) list.push_back({setup, first});
    }
    n_pixels += q.num_pixels;
  }
  const long long n_plain_tiles = static_cast<long long>(tiles.size());
  tiles.insert(tiles.end(), gradient_tiles.begin(), gradient_tiles.end());
  auto aligned = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
  const size_t setups_at = 0;
  const size_t frames_at = setups_at + aligned(jobs.size() * sizeof(kernels::ConeRaySetup));
  const size_t jobs_at =
      frames_at + (frames ? aligned(jobs.size() * sizeof(kernels::ConeRayPoseFrame)) : 0);
  const size_t tiles_at = jobs_at + aligned(jobs.size() * sizeof(PixelJob));
  const size_t pixels_at = tiles_at + aligned(tiles.size() * sizeof(PixelTile));
  const size_t bytes = pixels_at + aligned(static_cast<size_t>(n_pixels) * sizeof(int32_t));
  auto* stage = static_cast<uint8_t*>(cv.staging.Reserve(bytes));
  std::copy(setups, setups + jobs.size(),
            reinterpret_cast<kernels::ConeRaySetup*>(stage + setups_at));
  if (frames) {
    std::copy(frames, frames + jobs.size(),
              reinterpret_cast<kernels::ConeRayPoseFrame*>(stage + frames_at));
  }
  std::copy(jobs.begin(), jobs.end(), reinterpret_cast<PixelJob*>(stage + jobs_at));
  std::copy(tiles.begin(), tiles.end(), reinterpret_cast<PixelTile*>(stage + tiles_at));
  int32_t* px = reinterpret_cast<int32_t*>(stage + pixels_at);
  ParallelFor(n, options.num_threads, [&](long long r) {
    const ConePixelRequest& q = requests[r];
    std::copy(q.pixels, q.pixels + q.num_pixels, px + request_pixels[r]);
  });
  uint8_t* blob = cv.tables.Reserve(bytes);
  Check(cudaMemcpyAsync(blob, stage, bytes, cudaMemcpyHostToDevice, cv.stream),
        "cudaMemcpyAsync (pixel tables)");
  const size_t total = static_cast<size_t>(n_out);
  float* host = HostImages(cv, nullptr, total);
  std::vector<float> flat(host ? 0 : total);
  if (!host) host = flat.data();
  float* values = cv.images.Reserve(total);
  const VolumeGrid& g = volume.grid;
  Check(cudaEventRecord(cv.start, cv.stream), "cudaEventRecord");
  const auto* d_setups = reinterpret_cast<const kernels::ConeRaySetup*>(blob + setups_at);
  const auto* d_jobs = reinterpret_cast<const PixelJob*>(blob + jobs_at);
  const auto* d_tiles = reinterpret_cast<const PixelTile*>(blob + tiles_at);
  const auto* d_pixels = reinterpret_cast<const int32_t*>(blob + pixels_at);
  const auto* d_frames =
      frames ? reinterpret_cast<const kernels::ConeRayPoseFrame*>(blob + frames_at) : nullptr;
  const kernels::ArraySampler exact{cv.voxels, g.nx, g.ny, g.nz};
  auto blocks_for = [](long long n_tiles) {
    return static_cast<unsigned>(std::min<long long>(n_tiles, 1 << 20));
  };
  if (n_plain_tiles > 0) {
    const unsigned blocks = blocks_for(n_plain_tiles);
    if (options.cuda_texture) {
      ConePixelsKernel<<<blocks, kThreads, 0, cv.stream>>>(d_setups, d_jobs, d_tiles,
                                                           n_plain_tiles,
                                                           TextureSampler{cv.texture},
                                                           cv.occupancy, d_pixels, values);
    } else {
      ConePixelsKernel<<<blocks, kThreads, 0, cv.stream>>>(d_setups, d_jobs, d_tiles,
                                                           n_plain_tiles, exact, cv.occupancy,
                                                           d_pixels, values);
    }
    Check(cudaGetLastError(), "cone pixels kernel launch");
  }
  const long long n_gradient_tiles = static_cast<long long>(tiles.size()) - n_plain_tiles;
  if (n_gradient_tiles > 0) {  // the exact sampler (RenderConePixelsBatch checks)
    ConePixelsKernel<kernels::ArraySampler, true>
        <<<blocks_for(n_gradient_tiles), kThreads, 0, cv.stream>>>(
            d_setups, d_jobs, d_tiles + n_plain_tiles, n_gradient_tiles, exact, cv.occupancy,
            d_pixels, values, d_frames);
    Check(cudaGetLastError(), "cone pixels (pose gradients) kernel launch");
  }
  Check(cudaMemcpyAsync(host, values, total * sizeof(float), cudaMemcpyDeviceToHost, cv.stream),
        "cudaMemcpyAsync (pixels)");
  Check(cudaEventRecord(cv.stop, cv.stream), "cudaEventRecord");
  FinishCall(volume, cv, "cone-beam pixels");
  ParallelFor(n, options.num_threads, [&](long long r) {  // each request's [num_poses, num_pixels]
    const ConePixelRequest& q = requests[r];
    const long long count = static_cast<long long>(q.num_poses) * q.num_pixels;
    if (count == 0) return;
    std::copy(host + request_out[r], host + request_out[r] + count, q.out);
    if (q.pose_gradient) {
      std::copy(host + request_grad[r], host + request_grad[r] + 6 * count, q.pose_gradient);
    }
  });
}

void ProjectPointsCuda(bool cone, const ParallelCamera& camera, const ConeView* views,
                       const double* poses, const double* scales, int n, const double* points,
                       int m, double* out_xy, uint8_t* in_fov) {
  const long long total = static_cast<long long>(n) * m;
  if (total == 0) return;
  // Small, one-off buffers (freed on return or throw): points carry no volume to keep them.
  DeviceScratch<ConeView> views_dev;
  DeviceScratch<double> poses_dev, scales_dev, points_dev, xy;
  DeviceScratch<uint8_t> fov;
  if (cone) {
    Check(cudaMemcpy(views_dev.Reserve(n), views, n * sizeof(ConeView), cudaMemcpyHostToDevice),
          "cudaMemcpy (views)");
  } else {
    Check(cudaMemcpy(scales_dev.Reserve(n), scales, n * sizeof(double), cudaMemcpyHostToDevice),
          "cudaMemcpy (scales)");
  }
  Check(cudaMemcpy(poses_dev.Reserve(6 * static_cast<size_t>(n)), poses, 6 * n * sizeof(double),
                   cudaMemcpyHostToDevice),
        "cudaMemcpy (poses)");
  Check(cudaMemcpy(points_dev.Reserve(3 * static_cast<size_t>(m)), points, 3 * m * sizeof(double),
                   cudaMemcpyHostToDevice),
        "cudaMemcpy (points)");
  xy.Reserve(2 * static_cast<size_t>(total));
  fov.Reserve(static_cast<size_t>(total));
  ProjectKernel<<<BlocksFor(total), kThreads>>>(cone, camera, views_dev.ptr, poses_dev.ptr,
                                                 scales_dev.ptr, n, points_dev.ptr, m, xy.ptr,
                                                 fov.ptr);
  Check(cudaGetLastError(), "projection kernel launch");
  Check(cudaMemcpy(out_xy, xy.ptr, 2 * total * sizeof(double), cudaMemcpyDeviceToHost),
        "cudaMemcpy (projections)");
  Check(cudaMemcpy(in_fov, fov.ptr, total, cudaMemcpyDeviceToHost), "cudaMemcpy (flags)");
}

}  // namespace internal
}  // namespace fluororeg
