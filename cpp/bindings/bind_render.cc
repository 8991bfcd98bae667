// Bindings of the renderers (fluororeg/render.h). Angles are radians here: the Python layer
// converts from degrees.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "bindings.h"
#include "fluororeg/picture.h"

namespace fluororeg {
namespace bindings {

namespace {

void CheckPoses(const InArray<double>& poses) {
  CheckShape(poses, "poses", {-1, 6});
  CheckCount(poses.shape(0), limits::kMaxBatch, "poses");
}

// Points [m, 3] mm: shape and count.
void CheckPoints(const InArray<double>& points) {
  CheckShape(points, "points", {-1, 3});
  CheckCount(points.shape(0), limits::kMaxPoints, "points");
}

// Frames [n, H, W] of one size with an optional pixel mask inside [H, W], and a thread count.
void CheckFrameStack(const InArray<float>& frames, const std::optional<InArray<uint8_t>>& inside,
                     int num_threads) {
  CheckShape(frames, "frames", {-1, -1, -1});
  const long long h = static_cast<long long>(frames.shape(1)), w = static_cast<long long>(frames.shape(2));
  if (inside) CheckShape(*inside, "inside", {h, w});
  CheckCount(frames.shape(1), limits::kMaxImageSide, "frame rows");
  CheckCount(frames.shape(2), limits::kMaxImageSide, "frame columns");
  CheckThreads(num_threads);
}

// Output images [n, H, W]: a new NumPy array (for a CUDA call, page-locked when small: see
// AllocateHostImages), or CUDA device memory handed to Python as an ndarray with __dlpack__
// (torch.from_dlpack takes it without a copy) when options.output_on_device.
struct Images {
  float* data = nullptr;
  nb::object array;
};

Images NewImages(size_t n, size_t H, size_t W, const RenderOptions& options) {
  Images out;
  const size_t count = limits::CheckedArrayBytes({n, H, W}, sizeof(float), "images") / sizeof(float);
  // Not zero-filled: the renderers write every pixel (a batch of thousands of images would
  // otherwise be written twice).
  std::shared_ptr<float> mem = options.output_on_device ? CudaAllocateFloats(count)
                                                        : AllocateHostImages(options.device, count);
  auto* holder = new std::shared_ptr<float>(mem);
  nb::capsule owner(holder, [](void* p) noexcept { delete static_cast<std::shared_ptr<float>*>(p); });
  const size_t shape[3] = {n, H, W};
  out.data = mem.get();
  if (options.output_on_device) {
    out.array = nb::cast(nb::ndarray<float, nb::device::cuda>(mem.get(), 3, shape, owner));
  } else {
    out.array = nb::cast(nb::ndarray<nb::numpy, float>(mem.get(), 3, shape, owner));
  }
  return out;
}

RenderOptions Options(const std::string& device, int num_threads, bool on_device) {
  CheckThreads(num_threads);
  RenderOptions options;
  options.device = ParseDevice(device);
  options.num_threads = num_threads;
  options.output_on_device = on_device;
  if (on_device && options.device != Device::kCuda) {
    throw std::invalid_argument("on_device=True needs device='cuda', not '" + device + "'");
  }
  return options;
}

ConeMethod ParseConeMethod(const std::string& method) {
  if (method == "march") return ConeMethod::kRayMarch;
  if (method == "shear_warp") return ConeMethod::kShearWarp;
  throw std::invalid_argument("method '" + method + "' is unknown: expected 'march' or 'shear_warp'");
}

}  // namespace

void BindRender(nb::module_& m) {
  // The size limits of the core (fluororeg/limits.h), for checks in the Python layer.
  m.attr("MAX_IMAGE_SIDE") = limits::kMaxImageSide;
  m.attr("MAX_BATCH") = limits::kMaxBatch;
  m.attr("MAX_POINTS") = limits::kMaxPoints;
  m.attr("MAX_VOLUME_SIDE") = limits::kMaxVolumeSide;
  m.attr("MAX_VOLUME_VOXELS") = limits::kMaxVolumeVoxels;
  m.attr("MAX_OUTPUT_BYTES") = limits::kMaxOutputBytes;
  m.attr("MAX_THREADS") = limits::kMaxThreads;
  m.def("cuda_built", &CudaBuilt, "True when the CUDA backend was compiled in.");
  m.def("cuda_available", &CudaAvailable,
        "True when the CUDA backend was compiled in and a CUDA device is usable.");

  nb::class_<RenderVolume>(
      m, "RenderVolume",
      "A volume prepared once for rendering (a copy of the voxels, cone-beam occupancy, "
      "shear-warp slice stacks and, on CUDA, the device copies, a 3D texture and work "
      "buffers), reused by render_parallel_prepared / render_cone_prepared.")
      .def(
          "__init__",
          [](RenderVolume* self, const InArray<float>& volume,
             const InArray<double>& model_from_voxel, const std::string& device) {
            const VolumeGrid grid = GridFromArrays(volume, model_from_voxel);
            const Device d = ParseDevice(device);
            nb::gil_scoped_release release;
            new (self) RenderVolume(grid, d);
          },
          nb::arg("volume"), nb::arg("model_from_voxel"), nb::arg("device") = "cpu",
          "volume [nz, ny, nx] float32 attenuation (1/mm); model_from_voxel [3, 4]; device "
          "'cpu' or 'cuda' (uploads now).")
      .def_prop_ro("shape",
                   [](const RenderVolume& v) {
                     return std::make_tuple(v.grid().nz, v.grid().ny, v.grid().nx);
                   })
      .def_prop_ro("device",
                   [](const RenderVolume& v) {
                     return std::string(v.device() == Device::kCuda ? "cuda" : "cpu");
                   })
      .def_prop_ro("host_bytes", &RenderVolume::HostBytes)
      .def_prop_ro("device_bytes", &RenderVolume::DeviceBytes)
      .def_prop_ro("last_cuda_kernel_ms", &RenderVolume::LastCudaKernelMs,
                   "Milliseconds the CUDA kernels of the last CUDA call took (transfers "
                   "excluded).");

  m.def(
      "render_parallel_prepared",
      [](const RenderVolume& volume, double pixel_mm, int width, int height,
         const InArray<double>& poses, const InArray<double>& scales, const std::string& device,
         int num_threads, bool on_device) {
        CheckPoses(poses);
        const int n = static_cast<int>(poses.shape(0));
        CheckShape(scales, "scales", {n});
        const ParallelCamera camera{pixel_mm, width, height};
        ValidateParallelCamera(camera);
        const RenderOptions options = Options(device, num_threads, on_device);
        Images out = NewImages(n, height, width, options);
        {
          nb::gil_scoped_release release;
          RenderParallelDrr(volume, camera, poses.data(), scales.data(), n, out.data, options);
        }
        return out.array;
      },
      nb::arg("volume"), nb::arg("pixel_mm"), nb::arg("width"), nb::arg("height"),
      nb::arg("poses"), nb::arg("scales"), nb::arg("device") = "cpu", nb::arg("num_threads") = 0,
      nb::arg("on_device") = false,
      "render_parallel on a RenderVolume; on_device=True (device='cuda') returns a CUDA "
      "ndarray (DLPack) instead of a NumPy array.");

  m.def(
      "render_cone_prepared",
      [](const RenderVolume& volume, const InArray<double>& views, const InArray<double>& poses,
         double step_voxels, const std::string& device, int num_threads, bool on_device,
         bool cuda_texture, double stop_above, const std::string& method) {
        const std::vector<ConeView> v = UnpackViewsForPoses(views, poses);
        const int n = static_cast<int>(poses.shape(0));
        RenderOptions options = Options(device, num_threads, on_device);
        options.step_voxels = step_voxels;
        options.cuda_texture = cuda_texture;
        options.stop_above = stop_above;
        options.cone_method = ParseConeMethod(method);
        const size_t W = n ? v[0].width : 0, H = n ? v[0].height : 0;
        Images out = NewImages(n, H, W, options);
        {
          nb::gil_scoped_release release;
          RenderConeDrr(volume, v.data(), poses.data(), n, out.data, options);
        }
        return out.array;
      },
      nb::arg("volume"), nb::arg("views"), nb::arg("poses"), nb::arg("step_voxels") = 1.0,
      nb::arg("device") = "cpu", nb::arg("num_threads") = 0, nb::arg("on_device") = false,
      nb::arg("cuda_texture") = true,
      nb::arg("stop_above") = std::numeric_limits<double>::infinity(), nb::arg("method") = "march",
      "render_cone on a RenderVolume; cuda_texture=False samples with the exact trilinear "
      "interpolation of the CPU backend instead of the texture unit.");

  m.def(
      "render_cone_pixels",
      [](const RenderVolume& volume, const InArray<double>& view, const InArray<int32_t>& pixels,
         const InArray<double>& poses, double step_voxels, const std::string& device,
         int num_threads, bool pose_gradient) {
        const std::vector<ConeView> v = UnpackViews(view);
        if (v.size() != 1) {
          throw std::invalid_argument("got " + std::to_string(v.size()) +
                                      " views: expected one, packed [1, 16]");
        }
        CheckShape(pixels, "pixels", {-1});
        CheckPoses(poses);
        CheckThreads(num_threads);
        const size_t n = poses.shape(0), m = pixels.shape(0);
        RenderOptions options;
        options.device = ParseDevice(device);
        options.num_threads = num_threads;
        options.step_voxels = step_voxels;
        options.cuda_texture = false;
        auto values = NewArray<float>({n, m}, "values");
        auto gradients = NewArray<float>({pose_gradient ? n : 0, 6, m}, "pose gradients");
        ConePixelRequest q{v[0], pixels.data(), static_cast<int>(m), poses.data(),
                           static_cast<int>(n), values.data()};
        q.pose_gradient = pose_gradient ? gradients.data() : nullptr;
        {
          nb::gil_scoped_release release;
          RenderConePixelsBatch(volume, &q, 1, options);
        }
        return nb::make_tuple(values, gradients);
      },
      nb::arg("volume"), nb::arg("view"), nb::arg("pixels"), nb::arg("poses"),
      nb::arg("step_voxels") = 1.0, nb::arg("device") = "cpu", nb::arg("num_threads") = 0,
      nb::arg("pose_gradient") = false,
      "Line integrals at listed pixels y * W + x of one view (packed [1, 16]) for poses [n, 6] "
      "(rad, mm), exact trilinear sampler: (values [n, m], pose gradients [n, 6, m] or [0, 6, m]). "
      "The pose gradients are the derivatives along (w rad: a rotation about the model origin, "
      "world axes; dt mm), the intensity refinement's Jacobian (ConePixelRequest::pose_gradient).");

  m.def(
      "render_parallel",
      [](const InArray<float>& volume, const InArray<double>& model_from_voxel, double pixel_mm,
         int width, int height, const InArray<double>& poses, const InArray<double>& scales,
         const std::string& device, int num_threads) {
        const VolumeGrid grid = GridFromArrays(volume, model_from_voxel);
        CheckPoses(poses);
        const int n = static_cast<int>(poses.shape(0));
        CheckShape(scales, "scales", {n});
        const ParallelCamera camera{pixel_mm, width, height};
        ValidateParallelCamera(camera);
        CheckThreads(num_threads);
        RenderOptions options;
        options.device = ParseDevice(device);
        options.num_threads = num_threads;
        auto out = NewArray<float>({static_cast<size_t>(n), static_cast<size_t>(height),
                                    static_cast<size_t>(width)}, "images");
        {
          nb::gil_scoped_release release;
          RenderParallelDrr(grid, camera, poses.data(), scales.data(), n, out.data(), options);
        }
        return out;
      },
      nb::arg("volume"), nb::arg("model_from_voxel"), nb::arg("pixel_mm"), nb::arg("width"),
      nb::arg("height"), nb::arg("poses"), nb::arg("scales"), nb::arg("device") = "cpu",
      nb::arg("num_threads") = 0,
      "Parallel-beam shear-warp DRRs. volume [nz, ny, nx] float32 attenuation (1/mm); "
      "model_from_voxel [3, 4]; poses [n, 6] camera_from_model (rad, mm); scales [n]. "
      "Returns [n, height, width] float32 line integrals.");

  m.def(
      "render_cone",
      [](const InArray<float>& volume, const InArray<double>& model_from_voxel,
         const InArray<double>& views, const InArray<double>& poses, double step_voxels,
         const std::string& device, int num_threads, double stop_above, const std::string& method) {
        const VolumeGrid grid = GridFromArrays(volume, model_from_voxel);
        const std::vector<ConeView> v = UnpackViewsForPoses(views, poses);
        const int n = static_cast<int>(poses.shape(0));
        CheckThreads(num_threads);
        RenderOptions options;
        options.device = ParseDevice(device);
        options.num_threads = num_threads;
        options.step_voxels = step_voxels;
        options.stop_above = stop_above;
        options.cone_method = ParseConeMethod(method);
        const size_t W = n ? v[0].width : 0, H = n ? v[0].height : 0;
        auto out = NewArray<float>({static_cast<size_t>(n), H, W}, "images");
        {
          nb::gil_scoped_release release;
          RenderConeDrr(grid, v.data(), poses.data(), n, out.data(), options);
        }
        return out;
      },
      nb::arg("volume"), nb::arg("model_from_voxel"), nb::arg("views"), nb::arg("poses"),
      nb::arg("step_voxels") = 1.0, nb::arg("device") = "cpu", nb::arg("num_threads") = 0,
      nb::arg("stop_above") = std::numeric_limits<double>::infinity(), nb::arg("method") = "march",
      "Cone-beam DRRs. views [n, 16] packed ConeView rows; poses [n, 6] world_from_model "
      "(rad, mm); method 'march' (ray marching) or 'shear_warp' (perspective shear-warp). "
      "Returns [n, H, W] float32 line integrals (a ray stops once above stop_above).");

  m.def(
      "project_parallel",
      [](double pixel_mm, int width, int height, const InArray<double>& poses,
         const InArray<double>& scales, const InArray<double>& points, const std::string& device) {
        CheckPoses(poses);
        const int n = static_cast<int>(poses.shape(0));
        CheckShape(scales, "scales", {n});
        CheckPoints(points);
        const int mcount = static_cast<int>(points.shape(0));
        const ParallelCamera camera{pixel_mm, width, height};
        ValidateParallelCamera(camera);
        RenderOptions options;
        options.device = ParseDevice(device);
        auto xy = NewArray<double>({static_cast<size_t>(n), static_cast<size_t>(mcount), 2}, "xy");
        auto fov = NewArray<uint8_t>({static_cast<size_t>(n), static_cast<size_t>(mcount)}, "in_fov");
        ProjectPointsParallel(camera, poses.data(), scales.data(), n, points.data(), mcount,
                              xy.data(), fov.data(), options);
        return nb::make_tuple(xy, fov);
      },
      nb::arg("pixel_mm"), nb::arg("width"), nb::arg("height"), nb::arg("poses"),
      nb::arg("scales"), nb::arg("points"), nb::arg("device") = "cpu",
      "Project model points [m, 3] mm with parallel-beam poses: (xy [n, m, 2] px, "
      "in_fov [n, m] uint8).");

  m.def(
      "project_cone",
      [](const InArray<double>& views, const InArray<double>& poses,
         const InArray<double>& points, const std::string& device) {
        const std::vector<ConeView> v = UnpackViewsForPoses(views, poses);
        const int n = static_cast<int>(poses.shape(0));
        CheckPoints(points);
        const int mcount = static_cast<int>(points.shape(0));
        RenderOptions options;
        options.device = ParseDevice(device);
        auto xy = NewArray<double>({static_cast<size_t>(n), static_cast<size_t>(mcount), 2}, "xy");
        auto fov = NewArray<uint8_t>({static_cast<size_t>(n), static_cast<size_t>(mcount)}, "in_fov");
        ProjectPointsCone(v.data(), poses.data(), n, points.data(), mcount, xy.data(),
                          fov.data(), options);
        return nb::make_tuple(xy, fov);
      },
      nb::arg("views"), nb::arg("poses"), nb::arg("points"), nb::arg("device") = "cpu",
      "Project model points [m, 3] mm through cone views: (xy [n, m, 2] px (NaN behind the "
      "source), in_fov [n, m] uint8).");
  m.def(
      "cone_pixels_at_object",
      [](const InArray<double>& views, const InArray<double>& poses) {
        const std::vector<ConeView> v = UnpackViewsForPoses(views, poses);
        auto out = NewArray<double>({v.size()}, "pixel sizes");
        ConePixelsAtObject(v.data(), poses.data(), static_cast<int>(v.size()), out.data());
        return out;
      },
      nb::arg("views"), nb::arg("poses"),
      "Per image [n]: the view's [n, 16] smaller pitch at its pose's [n, 6] model origin, mm.");

  m.def(
      "frames_to_line_integrals",
      [](const InArray<float>& frames, const std::optional<InArray<double>>& source,
         const std::optional<InArray<uint8_t>>& mask, int num_threads) {
        CheckShape(frames, "frames", {-1, -1, -1});
        const size_t n = frames.shape(0), h = frames.shape(1), w = frames.shape(2);
        const long long hh = static_cast<long long>(h), ww = static_cast<long long>(w);
        if (source) CheckShape(*source, "source", {2, hh, ww});
        if (mask) CheckShape(*mask, "mask", {hh, ww});
        CheckCount(h, limits::kMaxImageSide, "frame rows");
        CheckCount(w, limits::kMaxImageSide, "frame columns");
        CheckThreads(num_threads);
        auto out = NewArray<float>({n, h, w}, "line integrals");
        {
          nb::gil_scoped_release release;
          FramesToLineIntegrals(frames.data(), static_cast<long long>(n), static_cast<int>(h),
                                static_cast<int>(w), source ? source->data() : nullptr,
                                mask ? mask->data() : nullptr, num_threads, out.data());
        }
        return out;
      },
      nb::arg("frames"), nb::arg("source").none(), nb::arg("mask").none(), nb::arg("num_threads") = 0,
      "Line integrals [n, H, W] float32 of intensifier frames [n, H, W] float32: resampled at "
      "source [2, H, W] (x, y frame px; bilinear, edge values beyond) when given, then "
      "max(0, -ln(max(v, 1e-4 I_open) / I_open)), I_open each frame's 99th percentile inside "
      "mask [H, W] uint8 (all pixels when None or empty).");

  m.def(
      "frame_statistics",
      [](const InArray<float>& frames, int side, const std::optional<InArray<uint8_t>>& inside,
         long long stride, int num_threads) {
        CheckFrameStack(frames, inside, num_threads);
        const size_t n = frames.shape(0), h = frames.shape(1), w = frames.shape(2);
        const size_t s = side > 0 ? static_cast<size_t>(side) : 0;
        auto thumbs = NewArray<double>({n, s, s}, "thumbnails");
        auto spread = NewArray<double>({n}, "spread");
        auto level = NewArray<double>({n}, "level");
        {
          nb::gil_scoped_release release;
          FrameStatistics(frames.data(), static_cast<long long>(n), static_cast<int>(h), static_cast<int>(w),
                          side, inside ? inside->data() : nullptr, stride, num_threads, thumbs.data(),
                          spread.data(), level.data());
        }
        return nb::make_tuple(thumbs, spread, level);
      },
      nb::arg("frames"), nb::arg("side"), nb::arg("inside").none(), nb::arg("stride") = 1,
      nb::arg("num_threads") = 0,
      "The input checks' figures of frames [n, H, W] float32 (FrameStatistics): (thumbs [n, side, "
      "side] block means, spread [n] = p99 - p1, level [n] = max(|p1|, |p99|)), the percentiles of "
      "every stride-th pixel where inside [H, W] uint8 is non-zero (all pixels when None).");

  m.def(
      "crop_frames",
      [](const InArray<float>& frames, const InArray<double>& boxes, int size,
         const std::optional<InArray<uint8_t>>& inside, bool normalise, double low_percentile,
         double high_percentile, float fill, int num_threads) {
        CheckFrameStack(frames, inside, num_threads);
        const size_t n = frames.shape(0), h = frames.shape(1), w = frames.shape(2);
        CheckShape(boxes, "boxes", {static_cast<long long>(n), 3});
        const size_t s = size > 0 ? static_cast<size_t>(size) : 0;
        auto out = NewArray<uint8_t>({n, s, s}, "crops");
        {
          nb::gil_scoped_release release;
          CropFrames(frames.data(), static_cast<long long>(n), static_cast<int>(h), static_cast<int>(w),
                     boxes.data(), size, inside ? inside->data() : nullptr, normalise, low_percentile,
                     high_percentile, fill, num_threads, out.data());
        }
        return out;
      },
      nb::arg("frames"), nb::arg("boxes"), nb::arg("size"), nb::arg("inside").none(),
      nb::arg("normalise"), nb::arg("low_percentile"), nb::arg("high_percentile"), nb::arg("fill"),
      nb::arg("num_threads") = 0,
      "uint8 crops [n, size, size] of frames [n, H, W] float32 in boxes [n, 3] (left, top, side; "
      "frame pixel-edge units), Pillow's BILINEAR box resampling reproduced (CropFrames).");

  m.def(
      "log_attenuation_pictures",
      [](const InArray<float>& crops, double percentile, int num_threads) {
        CheckShape(crops, "crops", {-1, -1, -1});
        const size_t n = crops.shape(0), h = crops.shape(1), w = crops.shape(2);
        CheckThreads(num_threads);
        auto out = NewArray<uint8_t>({n, h, w}, "pictures");
        {
          nb::gil_scoped_release release;
          LogAttenuationPictures(crops.data(), static_cast<long long>(n), static_cast<long long>(h * w),
                                 percentile, num_threads, out.data());
        }
        return out;
      },
      nb::arg("crops"), nb::arg("percentile"), nb::arg("num_threads") = 0,
      "DRR-like uint8 pictures [n, h, w] of crops of intensifier frames [n, h, w] float32 grey "
      "levels (LogAttenuationPictures).");

  m.def(
      "window_to_uint8",
      [](const InArray<float>& images, const std::optional<InArray<uint8_t>>& keep,
         double percentile, int num_threads) {
        CheckShape(images, "images", {-1, -1, -1});
        const size_t n = images.shape(0), h = images.shape(1), w = images.shape(2);
        if (keep) CheckShape(*keep, "keep", {static_cast<long long>(n), static_cast<long long>(h),
                                             static_cast<long long>(w)});
        auto out = NewArray<uint8_t>({n, h, w}, "images");
        auto hi = NewArray<float>({n}, "window_hi");
        {
          nb::gil_scoped_release release;
          WindowToUint8(images.data(), keep ? keep->data() : nullptr, static_cast<long long>(n),
                        static_cast<long long>(h * w), percentile, num_threads, hi.data(),
                        out.data());
        }
        return nb::make_tuple(out, hi);
      },
      nb::arg("images"), nb::arg("keep").none(), nb::arg("percentile"), nb::arg("num_threads") = 0,
      "8-bit pictures [n, H, W] of line integrals [n, H, W] float32 and their windows' upper "
      "ends window_hi [n]: per image the percentile of its positive values (pixels where keep "
      "[n, H, W] uint8 is 0 count as 0).");
}

}  // namespace bindings
}  // namespace fluororeg
