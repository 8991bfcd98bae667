// Bindings of the intensity refinement (fluororeg/refine.h). Poses are radians / mm here: the
// Python layer (python/fluororeg/core/refine.py) converts from degrees. RefineOptions is bound
// as a class with read-write fields, RefineVolumes (prepared once, passed to every call) as a
// class; the statuses and similarities as enums.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>
#include <vector>

#include "bindings.h"
#include "fluororeg/refine.h"

namespace fluororeg {
namespace bindings {

namespace {

// Shared argument unpacking; returns the frame count.
long long MakeInput(const RefineVolumes& volumes, const InArray<double>& views,
                    const InArray<float>& images,
                    const std::optional<InArray<uint8_t>>& image_masks, RefineInput* in) {
  in->prepared = &volumes;
  const std::vector<ConeView> v = UnpackViews(views);
  if (v.size() != 2)
    throw std::invalid_argument("got " + std::to_string(v.size()) +
                                " views: expected exactly two (view 1, view 2)");
  in->views[0] = v[0];
  in->views[1] = v[1];
  CheckShape(images, "images", {-1, 2, v[0].height, v[0].width});
  in->images = images.data();
  if (image_masks) {
    CheckShape(*image_masks, "image_masks", {2, v[0].height, v[0].width});
    in->image_masks = image_masks->data();
  }
  CheckCount(images.shape(0), limits::kMaxBatch, "frames");
  return static_cast<long long>(images.shape(0));
}

nb::dict RefineFramesPy(const RefineVolumes& volumes, const InArray<double>& views,
                        const InArray<float>& images,
                        std::optional<InArray<uint8_t>> image_masks,
                        const InArray<double>& init_poses, const RefineOptions& options,
                        std::optional<InArray<double>> view_weights) {
  RefineInput in;
  const long long F = MakeInput(volumes, views, images, image_masks, &in);
  CheckShape(init_poses, "init_poses", {F, 6});
  if (view_weights) {
    CheckShape(*view_weights, "view_weights", {F, 2});
    in.view_weights = view_weights->data();
  }
  CheckThreads(options.num_threads);
  std::vector<RefineResult> results(static_cast<size_t>(F));
  {
    nb::gil_scoped_release release;
    RefineFrames(in, init_poses.data(), static_cast<int>(F), results.data(), options);
  }
  const size_t f = static_cast<size_t>(F);
  auto poses = NewArray<double>({f, 6});
  auto similarity = NewArray<double>({f, 2});
  auto similarity_total = NewArray<double>({f});
  auto rotation_change = NewArray<double>({f});
  auto translation_change = NewArray<double>({f});
  auto iterations = NewArray<int32_t>({f});
  auto render_calls = NewArray<int32_t>({f});
  auto rendered_rays = NewArray<int64_t>({f});
  auto seconds = NewArray<double>({f});
  auto host_seconds = NewArray<double>({f});
  auto converged = NewArray<bool>({f});
  auto status = NewArray<int32_t>({f});
  for (size_t i = 0; i < f; ++i) {
    const RefineResult& r = results[i];
    for (int j = 0; j < 6; ++j) poses.data()[6 * i + j] = r.pose[j];
    similarity.data()[2 * i] = r.similarity[0];
    similarity.data()[2 * i + 1] = r.similarity[1];
    similarity_total.data()[i] = r.similarity_total;
    rotation_change.data()[i] = r.rotation_change_deg;
    translation_change.data()[i] = r.translation_change_mm;
    iterations.data()[i] = r.iterations;
    render_calls.data()[i] = r.render_calls;
    rendered_rays.data()[i] = r.rendered_rays;
    seconds.data()[i] = r.seconds;
    host_seconds.data()[i] = r.host_seconds;
    converged.data()[i] = r.converged;
    status.data()[i] = static_cast<int32_t>(r.status);
  }
  nb::dict out;
  out["poses"] = poses;
  out["similarity"] = similarity;
  out["similarity_total"] = similarity_total;
  out["rotation_change_deg"] = rotation_change;
  out["translation_change_mm"] = translation_change;
  out["iterations"] = iterations;
  out["render_calls"] = render_calls;
  out["rendered_rays"] = rendered_rays;
  out["seconds"] = seconds;
  out["host_seconds"] = host_seconds;
  out["converged"] = converged;
  out["status"] = status;
  return out;
}

nb::tuple EvaluatePy(const RefineVolumes& volumes, const InArray<double>& views,
                     const InArray<float>& images,
                     std::optional<InArray<uint8_t>> image_masks, const InArray<double>& poses,
                     int level, const RefineOptions& options) {
  RefineInput in;
  const long long F = MakeInput(volumes, views, images, image_masks, &in);
  CheckShape(poses, "poses", {F, 6});
  CheckThreads(options.num_threads);
  if (level < 0 || level > 16)
    throw std::invalid_argument("level " + std::to_string(level) + ": expected 0 to 16");
  const size_t f = static_cast<size_t>(F), h = in.views[0].height >> level,
               w = in.views[0].width >> level;
  auto similarity = NewArray<double>({f, 2}, "similarity");
  auto roi = NewArray<uint8_t>({f, 2, h, w}, "roi");
  {
    nb::gil_scoped_release release;
    EvaluateRefineSimilarity(in, poses.data(), static_cast<int>(F), level, similarity.data(),
                             roi.data(), options);
  }
  return nb::make_tuple(similarity, roi);
}

template <typename Fn>
double ImagePairSimilarity(const InArray<float>& a, const InArray<float>& b,
                           std::optional<InArray<uint8_t>> mask, Fn fn) {
  CheckShape(a, "a", {-1, -1});
  const long long H = static_cast<long long>(a.shape(0)), W = static_cast<long long>(a.shape(1));
  limits::CheckRange(H, 0, limits::kMaxImageSide, "image height", " pixels");
  limits::CheckRange(W, 0, limits::kMaxImageSide, "image width", " pixels");
  CheckShape(b, "b", {H, W});
  if (mask) CheckShape(*mask, "mask", {H, W});
  return fn(a.data(), b.data(), mask ? mask->data() : nullptr, static_cast<int>(W),
            static_cast<int>(H));
}

}  // namespace

void BindRefine(nb::module_& m) {
  nb::enum_<RefineSimilarity>(m, "RefineSimilarity", "Similarity measure of the refinement.")
      .value("gradient_correlation", RefineSimilarity::kGradientCorrelation)
      .value("ncc", RefineSimilarity::kNcc);
  nb::enum_<RefineStatus>(m, "RefineStatus", "Outcome of one frame's refinement.")
      .value("converged", RefineStatus::kConverged)
      .value("moved_far", RefineStatus::kMovedFar)
      .value("low_similarity", RefineStatus::kLowSimilarity)
      .value("no_overlap", RefineStatus::kNoOverlap)
      .value("invalid_start", RefineStatus::kInvalidStart);

  nb::class_<RefineOptions>(m, "RefineOptions", "Options of the intensity refinement (refine.h).")
      .def(nb::init<>())
      .def_rw("similarity", &RefineOptions::similarity)
      .def_rw("num_levels", &RefineOptions::num_levels)
      .def_rw("finest_level", &RefineOptions::finest_level)
      .def_rw("weight_view1", &RefineOptions::weight_view1)
      .def_rw("weight_view2", &RefineOptions::weight_view2)
      .def_rw("max_iterations", &RefineOptions::max_iterations)
      .def_rw("roi_margin_px", &RefineOptions::roi_margin_px)
      .def_rw("min_roi_pixels", &RefineOptions::min_roi_pixels)
      .def_rw("step_voxels", &RefineOptions::step_voxels)
      .def_rw("fd_step_px", &RefineOptions::fd_step_px)
      .def_rw("central_differences", &RefineOptions::central_differences)
      .def_rw("broyden_updates", &RefineOptions::broyden_updates)
      .def_rw("analytic_jacobian", &RefineOptions::analytic_jacobian)
      .def_rw("tolerance_deg", &RefineOptions::tolerance_deg)
      .def_rw("tolerance_mm", &RefineOptions::tolerance_mm)
      .def_rw("min_similarity", &RefineOptions::min_similarity)
      .def_rw("max_rotation_change_deg", &RefineOptions::max_rotation_change_deg)
      .def_rw("max_translation_change_mm", &RefineOptions::max_translation_change_mm)
      .def_rw("num_threads", &RefineOptions::num_threads)
      .def_rw("cuda_frames_in_flight", &RefineOptions::cuda_frames_in_flight)
      .def_rw("cuda_render_threads", &RefineOptions::cuda_render_threads)
      .def_prop_rw(
          "device",
          [](const RefineOptions& o) {
            return std::string(o.device == Device::kCuda ? "cuda" : "cpu");
          },
          [](RefineOptions& o, const std::string& d) { o.device = ParseDevice(d); },
          "Where the renders run: 'cpu' or 'cuda'.")
      .def("check", &ValidateRefineOptions, "Raise ValueError naming the first bad option.")
      .def("__copy__", [](const RefineOptions& o) { return o; })
      .def("__repr__", [](const RefineOptions& o) {
        auto d = [](double v) { return std::string(nb::str(nb::float_(v)).c_str()); };
        std::string s = "RefineOptions(similarity=";
        s += o.similarity == RefineSimilarity::kNcc ? "ncc" : "gradient_correlation";
        s += ", num_levels=" + std::to_string(o.num_levels) +
             ", finest_level=" + std::to_string(o.finest_level) + ", weight_view1=" +
             d(o.weight_view1) + ", weight_view2=" + d(o.weight_view2) +
             ", max_iterations=" + std::to_string(o.max_iterations) + ", roi_margin_px=" +
             d(o.roi_margin_px) + ", min_similarity=" + d(o.min_similarity) +
             ", max_rotation_change_deg=" + d(o.max_rotation_change_deg) +
             ", max_translation_change_mm=" + d(o.max_translation_change_mm) +
             ", device=" + (o.device == Device::kCuda ? "cuda" : "cpu") + ")";
        return s;
      });

  nb::class_<RefineVolumes>(
      m, "RefineVolumes",
      "The volumes a refinement renders, prepared once for many calls (refine.h): the "
      "attenuation and region-of-interest pyramids, on CUDA also their device copies. Holds "
      "its own copy of the voxels.")
      .def(
          "__init__",
          [](RefineVolumes* self, const InArray<float>& volume,
             const InArray<double>& model_from_voxel, std::optional<InArray<float>> bone,
             std::optional<InArray<double>> bone_model_from_voxel, int num_levels) {
            const VolumeGrid grid = GridFromArrays(volume, model_from_voxel, "volume");
            if (bone.has_value() != bone_model_from_voxel.has_value())
              throw std::invalid_argument(
                  "bone and bone_model_from_voxel go together: give both or neither");
            VolumeGrid bone_grid;
            if (bone) bone_grid = GridFromArrays(*bone, *bone_model_from_voxel, "bone");
            nb::gil_scoped_release release;
            new (self) RefineVolumes(grid, bone_grid, num_levels);
          },
          nb::arg("volume"), nb::arg("model_from_voxel"), nb::arg("bone").none(),
          nb::arg("bone_model_from_voxel").none(), nb::arg("num_levels"),
          "volume [nz, ny, nx] float32 attenuation per mm at the finest level's resolution, "
          "model_from_voxel [3, 4]; bone: region-of-interest volume (> 0 = bone) with its "
          "[3, 4], or None (the volume serves); num_levels: pyramid levels (1 to 8).")
      .def_prop_ro("num_levels", &RefineVolumes::num_levels);
  m.def("refine_frames", &RefineFramesPy, nb::arg("volumes"), nb::arg("views"),
        nb::arg("images"), nb::arg("image_masks").none(), nb::arg("init_poses"),
        nb::arg("options"), nb::arg("view_weights").none() = nb::none(),
        "Intensity refinement of F frames. volumes: RefineVolumes with at least the options' "
        "num_levels; views [2, 16] packed; images "
        "[F, 2, H, W] float32 (bone bright); image_masks [2, H, W] uint8 or None; init_poses "
        "[F, 6] (rad, mm); view_weights [F, 2] per-frame factors on the options' view weights "
        "(0: view left out) or None. Returns a dict of arrays: poses [F, 6] (rad, mm), similarity [F, 2], "
        "similarity_total [F], rotation_change_deg [F], translation_change_mm [F], iterations "
        "[F], render_calls [F], rendered_rays [F] (int64: pixels x poses), seconds [F], host_seconds [F] (CPU seconds of the frame's host work, renders excluded), "
        "converged [F], status [F] (RefineStatus values).");
  m.def("evaluate_refine_similarity", &EvaluatePy, nb::arg("volumes"), nb::arg("views"),
        nb::arg("images"), nb::arg("image_masks").none(), nb::arg("poses"),
        nb::arg("level"), nb::arg("options"),
        "The refinement's similarity at poses [F, 6] (rad, mm) at one pyramid level: "
        "(similarity [F, 2], roi [F, 2, H >> level, W >> level] uint8).");
  m.def(
      "gradient_correlation",
      [](const InArray<float>& a, const InArray<float>& b, std::optional<InArray<uint8_t>> mask) {
        return ImagePairSimilarity(a, b, mask, &GradientCorrelation);
      },
      nb::arg("a"), nb::arg("b"), nb::arg("mask").none() = nb::none(),
      "Gradient correlation of two float32 images [H, W] over a uint8 mask (or all pixels).");
  m.def(
      "normalized_cross_correlation",
      [](const InArray<float>& a, const InArray<float>& b, std::optional<InArray<uint8_t>> mask) {
        return ImagePairSimilarity(a, b, mask, &NormalizedCrossCorrelation);
      },
      nb::arg("a"), nb::arg("b"), nb::arg("mask").none() = nb::none(),
      "Normalised cross-correlation of two float32 images [H, W] over a uint8 mask.");
  m.def(
      "pyramid_view",
      [](const InArray<double>& view, int level) {
        CheckShape(view, "view", {kViewColumns});
        const ConeView v = PyramidView(UnpackViewRow(view.data(), "view"), level);
        auto out = NewArray<double>({static_cast<size_t>(kViewColumns)});
        PackViewRow(v, out.data());
        return out;
      },
      nb::arg("view"), nb::arg("level"),
      "The packed view [16] of pyramid level `level` (2^level x 2^level pixel means).");
}

}  // namespace bindings
}  // namespace fluororeg
