// Bindings of the view refinement (fluororeg/calibration.h). Views travel as packed [16]
// rows (source, detector centre, u, v, pitch_u, pitch_v, width, height), as in the renderer.
#include <nanobind/stl/string.h>

#include <cmath>

#include "bindings.h"
#include "fluororeg/calibration.h"

namespace fluororeg {
namespace bindings {
namespace {

ConeView UnpackView(const InArray<double>& view) {
  CheckShape(view, "view", {16});
  const double* r = view.data();
  for (int i = 0; i < 16; ++i) {
    if (!std::isfinite(r[i])) {
      throw std::invalid_argument("view holds a non-finite value at index " + std::to_string(i));
    }
  }
  ConeView v;
  for (int c = 0; c < 3; ++c) {
    v.source[c] = r[c];
    v.detector_centre[c] = r[3 + c];
    v.u[c] = r[6 + c];
    v.v[c] = r[9 + c];
  }
  v.pitch_u = r[12];
  v.pitch_v = r[13];
  if (!(v.pitch_u > 0) || !(v.pitch_v > 0)) {
    throw std::invalid_argument("view pitches must be positive, got " + std::to_string(r[12]) +
                                " and " + std::to_string(r[13]));
  }
  for (int c : {14, 15}) {
    if (!(r[c] >= 1 && r[c] <= 1 << 16) || r[c] != static_cast<int>(r[c])) {
      throw std::invalid_argument("view image size " + std::to_string(r[c]) +
                                  " must be a positive whole number of pixels");
    }
  }
  v.width = static_cast<int>(r[14]);
  v.height = static_cast<int>(r[15]);
  return v;
}

nb::ndarray<nb::numpy, double> PackView(const ConeView& v) {
  auto out = NewArray<double>({16});
  double* r = out.data();
  for (int c = 0; c < 3; ++c) {
    r[c] = v.source[c];
    r[3 + c] = v.detector_centre[c];
    r[6 + c] = v.u[c];
    r[9 + c] = v.v[c];
  }
  r[12] = v.pitch_u;
  r[13] = v.pitch_v;
  r[14] = v.width;
  r[15] = v.height;
  return out;
}

nb::ndarray<nb::numpy, double> ToArray(const std::vector<double>& r) {
  auto out = NewArray<double>({r.size() / 2, 2});
  for (size_t i = 0; i < r.size(); ++i) out.data()[i] = r[i];
  return out;
}

}  // namespace

void BindCalibration(nb::module_& m) {
  m.def(
      "refine_cone_view",
      [](const InArray<double>& view, const InArray<double>& points_world,
         const InArray<double>& pixels, bool refine_source, bool refine_detector_centre,
         bool refine_orientation, int max_iterations, double huber_px) {
        const ConeView v = UnpackView(view);
        CheckShape(points_world, "points_world", {-1, 3});
        const int n = static_cast<int>(points_world.shape(0));
        CheckShape(pixels, "pixels", {n, 2});
        ViewRefineOptions options;
        options.refine_source = refine_source;
        options.refine_detector_centre = refine_detector_centre;
        options.refine_orientation = refine_orientation;
        options.max_iterations = max_iterations;
        options.huber_px = huber_px;
        ViewRefineResult r;
        {
          nb::gil_scoped_release release;
          r = RefineConeView(v, points_world.data(), pixels.data(), n, options);
        }
        nb::dict out;
        out["view"] = PackView(r.view);
        out["initial_rms_px"] = r.initial_rms_px;
        out["final_rms_px"] = r.final_rms_px;
        out["residuals_px"] = ToArray(r.residuals_px);
        out["iterations"] = r.iterations;
        out["converged"] = r.converged;
        out["message"] = r.message;
        return out;
      },
      nb::arg("view"), nb::arg("points_world"), nb::arg("pixels"),
      nb::arg("refine_source") = true, nb::arg("refine_detector_centre") = true,
      nb::arg("refine_orientation") = true, nb::arg("max_iterations") = 200,
      nb::arg("huber_px") = 0.0,
      "Refine a packed cone view [16] so that beads points_world [n, 3] mm project onto "
      "pixels [n, 2]. Returns a dict: view [16], initial_rms_px, final_rms_px, residuals_px "
      "[n, 2], iterations, converged, message.");

  m.def(
      "reprojection_residuals",
      [](const InArray<double>& view, const InArray<double>& points_world,
         const InArray<double>& pixels) {
        const ConeView v = UnpackView(view);
        CheckShape(points_world, "points_world", {-1, 3});
        const int n = static_cast<int>(points_world.shape(0));
        CheckShape(pixels, "pixels", {n, 2});
        return ToArray(ReprojectionResiduals(v, points_world.data(), pixels.data(), n));
      },
      nb::arg("view"), nb::arg("points_world"), nb::arg("pixels"),
      "Reprojection residuals (projected - observed) [n, 2] px of a packed view; NaN behind "
      "the source.");
}

}  // namespace bindings
}  // namespace fluororeg
