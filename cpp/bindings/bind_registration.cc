// Bindings of the registration engine (fluororeg/registration.h) and the error metrics
// (fluororeg/metrics.h). Angles are radians here: the Python layer converts from degrees.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>
#include <vector>

#include "bindings.h"
#include "fluororeg/metrics.h"
#include "fluororeg/registration.h"

namespace fluororeg {
namespace bindings {

namespace {

ObjectiveMode ParseMode(const std::string& mode) {
  if (mode == "least_squares") return ObjectiveMode::kLeastSquares;
  if (mode == "frobenius") return ObjectiveMode::kFrobenius;
  throw std::invalid_argument("mode '" + mode +
                              "' is unknown: expected 'least_squares' or 'frobenius'");
}

RobustLoss ParseLoss(const std::string& loss) {
  if (loss == "none") return RobustLoss::kNone;
  if (loss == "huber") return RobustLoss::kHuber;
  if (loss == "cauchy") return RobustLoss::kCauchy;
  throw std::invalid_argument("loss '" + loss + "' is unknown: expected 'none', 'huber' or 'cauchy'");
}

nb::dict RegisterFramesPy(const InArray<double>& landmarks, const InArray<double>& views,
                          const InArray<int32_t>& pairs, const InArray<double>& detections,
                          std::optional<InArray<double>> weights,
                          std::optional<InArray<double>> init_poses, const std::string& mode,
                          const std::string& loss, double loss_scale_mm, bool mirror,
                          int min_visible, int max_iterations, int screen_iterations,
                          int num_threads) {
  CheckShape(landmarks, "landmarks", {-1, 3});
  const long long n = static_cast<long long>(landmarks.shape(0));
  const std::vector<ConeView> v = UnpackViews(views);
  if (v.size() != 2) {
    throw std::invalid_argument("got " + std::to_string(v.size()) +
                                " views: expected exactly two (F1, F2)");
  }
  CheckShape(pairs, "pairs", {-1, 2});
  CheckShape(detections, "detections", {-1, 2, n, 2});
  const long long F = static_cast<long long>(detections.shape(0));
  if (weights) CheckShape(*weights, "weights", {F, 2, n});
  if (init_poses) CheckShape(*init_poses, "init_poses", {F, 6});

  RegistrationSetup setup;
  setup.landmarks = landmarks.data();
  setup.num_landmarks = static_cast<int>(n);
  setup.views[0] = v[0];
  setup.views[1] = v[1];
  setup.pairs = pairs.data();
  setup.num_pairs = static_cast<int>(pairs.shape(0));
  RegistrationOptions options;
  options.mode = ParseMode(mode);
  options.loss = ParseLoss(loss);
  options.loss_scale_mm = loss_scale_mm;
  options.mirror = mirror;
  options.min_visible = min_visible;
  options.max_iterations = max_iterations;
  options.screen_iterations = screen_iterations;
  options.num_threads = num_threads;

  std::vector<RegistrationResult> results(static_cast<size_t>(F));
  {
    nb::gil_scoped_release release;
    RegisterFrames(setup, detections.data(), weights ? weights->data() : nullptr,
                   init_poses ? init_poses->data() : nullptr, static_cast<int>(F), results.data(),
                   options);
  }
  const size_t f = static_cast<size_t>(F);
  auto poses = NewArray<double>({f, 6});
  auto matrices = NewArray<double>({f, 4, 4});
  auto objective = NewArray<double>({f});
  auto case_objective = NewArray<double>({f, 4});
  auto rms_mm = NewArray<double>({f, 2});
  auto rms_px = NewArray<double>({f, 2});
  auto n_vis = NewArray<int32_t>({f});
  auto mirror_case = NewArray<int32_t>({f});
  auto iterations = NewArray<int32_t>({f});
  auto converged = NewArray<bool>({f});
  auto status = NewArray<int32_t>({f});
  for (size_t i = 0; i < f; ++i) {
    const RegistrationResult& r = results[i];
    for (int j = 0; j < 6; ++j) poses.data()[6 * i + j] = r.pose[j];
    for (int j = 0; j < 16; ++j) matrices.data()[16 * i + j] = r.matrix[j];
    for (int j = 0; j < 4; ++j) case_objective.data()[4 * i + j] = r.case_objective[j];
    objective.data()[i] = r.objective;
    for (int k = 0; k < 2; ++k) {
      rms_mm.data()[2 * i + k] = r.rms_mm[k];
      rms_px.data()[2 * i + k] = r.rms_px[k];
    }
    n_vis.data()[i] = r.n_vis;
    mirror_case.data()[i] = r.mirror_case;
    iterations.data()[i] = r.iterations;
    converged.data()[i] = r.converged;
    status.data()[i] = static_cast<int32_t>(r.status);
  }
  nb::dict out;
  out["poses"] = poses;
  out["matrices"] = matrices;
  out["objective"] = objective;
  out["case_objective"] = case_objective;
  out["rms_mm"] = rms_mm;
  out["rms_px"] = rms_px;
  out["n_vis"] = n_vis;
  out["mirror_case"] = mirror_case;
  out["iterations"] = iterations;
  out["converged"] = converged;
  out["status"] = status;
  return out;
}

}  // namespace

void BindRegistration(nb::module_& m) {
  m.def("register_frames", &RegisterFramesPy, nb::arg("landmarks"), nb::arg("views"),
        nb::arg("pairs"), nb::arg("detections"), nb::arg("weights").none(),
        nb::arg("init_poses").none(), nb::arg("mode") = "least_squares",
        nb::arg("loss") = "none", nb::arg("loss_scale_mm") = 1.0, nb::arg("mirror") = true,
        nb::arg("min_visible") = 4, nb::arg("max_iterations") = 100, nb::arg("screen_iterations") = 4,
        nb::arg("num_threads") = 0,
        "Point-based registration of F frames. landmarks [N, 3] mm; views [2, 16] packed; "
        "pairs [P, 2] int32; detections [F, 2, N, 2] px (NaN = not detected); weights "
        "[F, 2, N] or None; init_poses [F, 6] (rad, mm) or None (paper's init). Returns a dict "
        "of arrays: poses [F, 6] (rad, mm), matrices [F, 4, 4], objective [F], case_objective "
        "[F, 4], rms_mm [F, 2], rms_px [F, 2], n_vis [F], mirror_case [F], iterations [F], "
        "converged [F], status [F] (0 ok, 1 too_few_landmarks, 2 failed).");

  m.def(
      "pose_errors",
      [](const InArray<double>& a, const InArray<double>& b) {
        CheckShape(a, "pose_a", {-1, 6});
        CheckShape(b, "pose_b", {static_cast<long long>(a.shape(0)), 6});
        const size_t n = a.shape(0);
        auto out = NewArray<double>({n, 2});
        for (size_t i = 0; i < n; ++i)
          PoseErrors(a.data() + 6 * i, b.data() + 6 * i, out.data() + 2 * i,
                     out.data() + 2 * i + 1);
        return out;
      },
      nb::arg("pose_a"), nb::arg("pose_b"),
      "Eq. 3 errors of [n, 6] pose pairs (rad, mm): [n, 2] = (eps_theta rad, eps_tau mm).");

  m.def(
      "mean_landmark_distance",
      [](const InArray<double>& landmarks, const InArray<double>& a, const InArray<double>& b) {
        CheckShape(landmarks, "landmarks", {-1, 3});
        CheckShape(a, "pose_a", {-1, 6});
        CheckShape(b, "pose_b", {static_cast<long long>(a.shape(0)), 6});
        const size_t n = a.shape(0);
        auto out = NewArray<double>({n});
        for (size_t i = 0; i < n; ++i)
          out.data()[i] = MeanLandmarkDistance(landmarks.data(),
                                               static_cast<int>(landmarks.shape(0)),
                                               a.data() + 6 * i, b.data() + 6 * i);
        return out;
      },
      nb::arg("landmarks"), nb::arg("pose_a"), nb::arg("pose_b"),
      "Mean distance (mm) between landmarks [m, 3] placed by pose_a and pose_b [n, 6] "
      "(rad, mm): [n].");
}

}  // namespace bindings
}  // namespace fluororeg
