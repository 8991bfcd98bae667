// Bindings of the renderers (fluororeg/render.h). Angles are radians here: the Python layer
// converts from degrees.
#include <nanobind/stl/string.h>

#include <vector>

#include "bindings.h"

namespace fluororeg {
namespace bindings {

namespace {

VolumeGrid MakeGrid(const InArray<float>& volume, const InArray<double>& model_from_voxel) {
  CheckShape(volume, "volume", {-1, -1, -1});
  CheckShape(model_from_voxel, "model_from_voxel", {3, 4});
  VolumeGrid g;
  g.data = volume.data();
  g.nz = static_cast<int>(volume.shape(0));
  g.ny = static_cast<int>(volume.shape(1));
  g.nx = static_cast<int>(volume.shape(2));
  for (int i = 0; i < 12; ++i) g.model_from_voxel.m[i] = model_from_voxel.data()[i];
  return g;
}

void CheckPoses(const InArray<double>& poses) { CheckShape(poses, "poses", {-1, 6}); }

}  // namespace

void BindRender(nb::module_& m) {
  m.def("cuda_built", &CudaBuilt, "True when the CUDA backend was compiled in.");
  m.def("cuda_available", &CudaAvailable,
        "True when the CUDA backend was compiled in and a CUDA device is usable.");

  m.def(
      "render_parallel",
      [](const InArray<float>& volume, const InArray<double>& model_from_voxel, double pixel_mm,
         int width, int height, const InArray<double>& poses, const InArray<double>& scales,
         const std::string& device, int num_threads) {
        const VolumeGrid grid = MakeGrid(volume, model_from_voxel);
        CheckPoses(poses);
        const int n = static_cast<int>(poses.shape(0));
        CheckShape(scales, "scales", {n});
        const ParallelCamera camera{pixel_mm, width, height};
        ValidateParallelCamera(camera);
        RenderOptions options;
        options.device = ParseDevice(device);
        options.num_threads = num_threads;
        auto out = NewArray<float>({static_cast<size_t>(n), static_cast<size_t>(height),
                                    static_cast<size_t>(width)});
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
         const std::string& device, int num_threads) {
        const VolumeGrid grid = MakeGrid(volume, model_from_voxel);
        const std::vector<ConeView> v = UnpackViewsForPoses(views, poses);
        const int n = static_cast<int>(poses.shape(0));
        RenderOptions options;
        options.device = ParseDevice(device);
        options.num_threads = num_threads;
        options.step_voxels = step_voxels;
        const size_t W = n ? v[0].width : 0, H = n ? v[0].height : 0;
        auto out = NewArray<float>({static_cast<size_t>(n), H, W});
        {
          nb::gil_scoped_release release;
          RenderConeDrr(grid, v.data(), poses.data(), n, out.data(), options);
        }
        return out;
      },
      nb::arg("volume"), nb::arg("model_from_voxel"), nb::arg("views"), nb::arg("poses"),
      nb::arg("step_voxels") = 1.0, nb::arg("device") = "cpu", nb::arg("num_threads") = 0,
      "Cone-beam DRRs. views [n, 16] packed ConeView rows; poses [n, 6] world_from_model "
      "(rad, mm). Returns [n, H, W] float32 line integrals.");

  m.def(
      "project_parallel",
      [](double pixel_mm, int width, int height, const InArray<double>& poses,
         const InArray<double>& scales, const InArray<double>& points, const std::string& device) {
        CheckPoses(poses);
        const int n = static_cast<int>(poses.shape(0));
        CheckShape(scales, "scales", {n});
        CheckShape(points, "points", {-1, 3});
        const int mcount = static_cast<int>(points.shape(0));
        const ParallelCamera camera{pixel_mm, width, height};
        RenderOptions options;
        options.device = ParseDevice(device);
        auto xy = NewArray<double>({static_cast<size_t>(n), static_cast<size_t>(mcount), 2});
        auto fov = NewArray<uint8_t>({static_cast<size_t>(n), static_cast<size_t>(mcount)});
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
        CheckShape(points, "points", {-1, 3});
        const int mcount = static_cast<int>(points.shape(0));
        RenderOptions options;
        options.device = ParseDevice(device);
        auto xy = NewArray<double>({static_cast<size_t>(n), static_cast<size_t>(mcount), 2});
        auto fov = NewArray<uint8_t>({static_cast<size_t>(n), static_cast<size_t>(mcount)});
        ProjectPointsCone(v.data(), poses.data(), n, points.data(), mcount, xy.data(),
                          fov.data(), options);
        return nb::make_tuple(xy, fov);
      },
      nb::arg("views"), nb::arg("poses"), nb::arg("points"), nb::arg("device") = "cpu",
      "Project model points [m, 3] mm through cone views: (xy [n, m, 2] px (NaN behind the "
      "source), in_fov [n, m] uint8).");
}

}  // namespace bindings
}  // namespace fluororeg
