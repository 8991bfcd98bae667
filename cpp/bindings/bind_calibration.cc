// Bindings of the view refinement (fluororeg/calibration.h) and of the distortion correction's
// point maps (fluororeg/distortion.h). Views travel as packed [16] rows (source, intensifier
// centre, u, v, pitch_u, pitch_v, width, height), as in the renderer.
#include <nanobind/stl/string.h>

#include <cmath>

#include "bindings.h"
#include "fluororeg/calibration.h"
#include "fluororeg/distortion.h"

namespace fluororeg {
namespace bindings {
namespace {

ConeView UnpackView(const InArray<double>& view) {
  CheckShape(view, "view", {kViewColumns});
  return UnpackViewRow(view.data(), "view");
}

nb::ndarray<nb::numpy, double> PackView(const ConeView& v) {
  auto out = NewArray<double>({static_cast<size_t>(kViewColumns)});
  PackViewRow(v, out.data());
  return out;
}

// The polynomial of order with normalisation centre [2] and scale, coefficient tables [terms, 2]
// (inverse: may be null), checked against the order.
DistortionPolynomial MakePolynomial(int order, const InArray<double>& centre, double scale,
                                    const InArray<double>& coef, const InArray<double>* inverse) {
  if (order < 1 || order > kMaxDistortionOrder)
    throw std::invalid_argument("distortion order " + std::to_string(order) + ": expected 1 to " +
                                std::to_string(kMaxDistortionOrder));
  CheckShape(centre, "centre", {2});
  const long long terms = DistortionTerms(order);
  CheckShape(coef, "coef", {terms, 2});
  if (inverse != nullptr) CheckShape(*inverse, "inverse_coef", {terms, 2});
  DistortionPolynomial d;
  d.order = order;
  d.cx = centre.data()[0];
  d.cy = centre.data()[1];
  d.scale = scale;
  d.coef = coef.data();
  d.inverse_coef = inverse != nullptr ? inverse->data() : nullptr;
  return d;
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
         const InArray<double>& pixels, bool refine_source, bool refine_intensifier_centre,
         bool refine_orientation, int max_iterations, double huber_px) {
        const ConeView v = UnpackView(view);
        CheckShape(points_world, "points_world", {-1, 3});
        CheckCount(points_world.shape(0), limits::kMaxPoints, "beads");
        const int n = static_cast<int>(points_world.shape(0));
        CheckShape(pixels, "pixels", {n, 2});
        limits::CheckRange(max_iterations, 0, 100000, "max_iterations");
        if (!(huber_px >= 0) || !std::isfinite(huber_px)) {
          throw std::invalid_argument("huber_px = " + std::to_string(huber_px) +
                                      ": expected a finite value >= 0 (0 = plain least squares)");
        }
        ViewRefineOptions options;
        options.refine_source = refine_source;
        options.refine_intensifier_centre = refine_intensifier_centre;
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
      nb::arg("refine_source") = true, nb::arg("refine_intensifier_centre") = true,
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
        CheckCount(points_world.shape(0), limits::kMaxPoints, "beads");
        const int n = static_cast<int>(points_world.shape(0));
        CheckShape(pixels, "pixels", {n, 2});
        return ToArray(ReprojectionResiduals(v, points_world.data(), pixels.data(), n));
      },
      nb::arg("view"), nb::arg("points_world"), nb::arg("pixels"),
      "Reprojection residuals (projected - observed) [n, 2] px of a packed view; NaN behind "
      "the source.");

  m.def(
      "undistort_points",
      [](int order, const InArray<double>& centre, double scale, const InArray<double>& coef,
         const InArray<double>& points) {
        const DistortionPolynomial d = MakePolynomial(order, centre, scale, coef, nullptr);
        CheckShape(points, "points", {-1, 2});
        const size_t n = points.shape(0);
        auto out = NewArray<double>({n, 2}, "points");
        UndistortPoints(d, points.data(), static_cast<long long>(n), out.data());
        return out;
      },
      nb::arg("order"), nb::arg("centre"), nb::arg("scale"), nb::arg("coef"), nb::arg("points"),
      "The distortion correction U of points [n, 2] px (distorted -> undistorted; UndistortPoints): "
      "polynomial order, normalisation centre [2] and scale (px), coef [terms, 2].");

  m.def(
      "distort_points",
      [](int order, const InArray<double>& centre, double scale, const InArray<double>& coef,
         const InArray<double>& inverse_coef, const InArray<double>& points, int iterations) {
        const DistortionPolynomial d = MakePolynomial(order, centre, scale, coef, &inverse_coef);
        CheckShape(points, "points", {-1, 2});
        const size_t n = points.shape(0);
        auto out = NewArray<double>({n, 2}, "points");
        DistortPoints(d, points.data(), static_cast<long long>(n), iterations, out.data());
        return out;
      },
      nb::arg("order"), nb::arg("centre"), nb::arg("scale"), nb::arg("coef"), nb::arg("inverse_coef"),
      nb::arg("points"), nb::arg("iterations"),
      "The distorted points [n, 2] px whose correction U is points (DistortPoints): the reverse "
      "polynomial inverse_coef, then `iterations` Newton steps.");
}

}  // namespace bindings
}  // namespace fluororeg
