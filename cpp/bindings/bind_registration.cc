// Bindings of the registration engine (fluororeg/registration.h) and the error metrics
// (fluororeg/metrics.h). Angles are radians here: the Python layer converts from degrees.
//
// RegistrationOptions is a class with named fields (keyword constructor); RegistrationStatus
// an enum whose member names are the statuses of the pose files; register_batch is the whole
// registration of a batch (first solves, init mode, view-agreement check).
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bindings.h"
#include "fluororeg/metrics.h"
#include "fluororeg/registration.h"

namespace fluororeg {
namespace bindings {

namespace {

using Options = RegistrationOptions;

// ---- typed field conversion (clear TypeErrors naming the field) ----------------------------

std::string TypeName(nb::handle h) { return nb::type_name(h.type()).c_str(); }

bool IsBool(nb::handle h) {
  const std::string t = TypeName(h);
  return PyBool_Check(h.ptr()) || t == "numpy.bool" || t == "numpy.bool_";
}

int ToInt(nb::handle h, const char* name) {
  if (IsBool(h) || !PyIndex_Check(h.ptr())) {
    throw nb::type_error((std::string(name) + " must be an integer, got " + TypeName(h)).c_str());
  }
  const nb::object index = nb::steal(PyNumber_Index(h.ptr()));
  if (!index.is_valid()) throw nb::python_error();
  int overflow = 0;  // beyond 64 bits (nb::cast would throw std::bad_cast, a RuntimeError)
  const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (v == -1 && PyErr_Occurred()) throw nb::python_error();
  if (overflow != 0 || v < -(1LL << 31) || v >= (1LL << 31)) {
    throw std::invalid_argument(std::string(name) + " = " + nb::str(index).c_str() +
                                " is out of range");
  }
  return static_cast<int>(v);
}

double ToDouble(nb::handle h, const char* name) {
  if (IsBool(h) || PyUnicode_Check(h.ptr()) || !PyNumber_Check(h.ptr())) {
    throw nb::type_error((std::string(name) + " must be a number, got " + TypeName(h)).c_str());
  }
  const double v = PyFloat_AsDouble(h.ptr());
  if (v == -1.0 && PyErr_Occurred()) throw nb::python_error();
  return v;
}

bool ToBool(nb::handle h, const char* name) {
  if (!IsBool(h)) {
    throw nb::type_error((std::string(name) + " must be a bool, got " + TypeName(h)).c_str());
  }
  return PyObject_IsTrue(h.ptr()) == 1;
}

std::string ToStr(nb::handle h, const char* name) {
  if (!PyUnicode_Check(h.ptr())) {
    throw nb::type_error((std::string(name) + " must be a string, got " + TypeName(h)).c_str());
  }
  return nb::cast<std::string>(h);
}

// One Python-visible field: its name, docstring, getter and setter.
struct Field {
  const char* name;
  const char* doc;
  std::function<nb::object(const Options&)> get;
  std::function<void(Options&, nb::handle)> set;
};

#define FLUORO_INT_FIELD(f, doc)                                                    \
  Field {                                                                           \
    #f, doc, [](const Options& o) { return nb::object(nb::int_(o.f)); },            \
        [](Options& o, nb::handle h) { o.f = ToInt(h, #f); }                        \
  }
#define FLUORO_FLOAT_FIELD(f, doc)                                                  \
  Field {                                                                           \
    #f, doc, [](const Options& o) { return nb::object(nb::float_(o.f)); },          \
        [](Options& o, nb::handle h) { o.f = ToDouble(h, #f); }                     \
  }

// A field where 0 in C++ means "off" and None in Python: None <-> 0, an explicit 0 is refused.
Field OptionalPositiveField(const char* name, const char* doc, double Options::*member,
                            const char* expected) {
  return Field{name, doc,
               [member](const Options& o) {
                 return o.*member == 0.0 ? nb::none() : nb::object(nb::float_(o.*member));
               },
               [member, name, expected](Options& o, nb::handle h) {
                 o.*member = h.is_none() ? 0.0 : ToDouble(h, name);
                 if (o.*member == 0.0 && !h.is_none()) {
                   throw std::invalid_argument(std::string(name) + " = 0: expected " + expected);
                 }
               }};
}

const std::vector<Field>& Fields() {
  static const std::vector<Field> fields = {
      {"mode", "Objective: 'least_squares' (sum of rho(|e|^2), mm^2) or 'frobenius' (the paper's "
               "Eq. 2, sum over views of the Frobenius norm, mm).",
       [](const Options& o) { return nb::object(nb::str(ObjectiveModeName(o.mode))); },
       [](Options& o, nb::handle h) { o.mode = ParseObjectiveMode(ToStr(h, "mode")); }},
      {"loss", "Robust loss per landmark and view: None, 'huber' or 'cauchy' (least_squares only).",
       [](const Options& o) {
         return o.loss == RobustLoss::kNone ? nb::none() : nb::object(nb::str(RobustLossName(o.loss)));
       },
       [](Options& o, nb::handle h) {
         o.loss = h.is_none() ? RobustLoss::kNone : ParseRobustLoss(ToStr(h, "loss"));
       }},
      FLUORO_FLOAT_FIELD(loss_scale_mm, "Scale a of the robust loss, mm on the intensifier (> 0)."),
      {"mirror", "The paper's four-case mirror strategy (Table 1; needs pairs).",
       [](const Options& o) { return nb::object(nb::bool_(o.mirror)); },
       [](Options& o, nb::handle h) { o.mirror = ToBool(h, "mirror"); }},
      FLUORO_INT_FIELD(min_visible, "Fewest landmarks detected in both fields of view (>= 4)."),
      FLUORO_INT_FIELD(max_iterations, "Solver iterations per solve (>= 1)."),
      FLUORO_INT_FIELD(screen_iterations,
                       "Every mirror case first gets this many iterations; only contenders "
                       "(objective within screen_ratio of the best) are finished (0: all)."),
      FLUORO_FLOAT_FIELD(screen_ratio, "See screen_iterations (>= 1)."),
      FLUORO_FLOAT_FIELD(function_tolerance, "Ceres function tolerance."),
      FLUORO_FLOAT_FIELD(gradient_tolerance, "Ceres gradient tolerance."),
      FLUORO_FLOAT_FIELD(parameter_tolerance, "Ceres parameter tolerance."),
      FLUORO_INT_FIELD(num_threads, "Threads of a batch (0: all cores)."),
      {"init", "Start of each frame: 'paper' (theta 0, tau the system centre), 'given' "
               "(init_poses) or 'previous' (the previous frame's registered pose, sequential; "
               "the paper's start when that fails).",
       [](const Options& o) { return nb::object(nb::str(InitModeName(o.init))); },
       [](Options& o, nb::handle h) { o.init = ParseInitMode(ToStr(h, "init")); }},
      OptionalPositiveField("view_outlier_ratio",
                            "View-agreement check (None: off): a frame is suspect when a view's RMS "
                            "exceeds this many times the recording's typical one (> 1).",
                            &Options::view_outlier_ratio, "None (off) or a number > 1"),
      FLUORO_FLOAT_FIELD(view_joint_ratio,
                         "Suspect too when both views exceed this many times their typical RMS "
                         "(in (1, view_outlier_ratio])."),
      FLUORO_FLOAT_FIELD(view_fit_ratio,
                         "A view fits alone when its own RMS is at most this many times typical "
                         "(in (0, view_joint_ratio))."),
      FLUORO_INT_FIELD(view_min_frames,
                       "Fewest registered frames for a typical residual (else no check)."),
      OptionalPositiveField("max_residual_mm",
                            "Quality gate (None: off): the largest RMS residual per view at the bone, mm "
                            "(the intensifier-plane residual over the magnification at each landmark); a "
                            "frame beyond it is 'large_residual' (pose kept, not registered).",
                            &Options::max_residual_mm, "None (off) or a number > 0"),
      FLUORO_INT_FIELD(min_inliers_per_view,
                       "Quality gate: fewest landmarks per view within max_residual_mm at the "
                       "bone (>= 1); else 'few_inliers'."),
      FLUORO_FLOAT_FIELD(min_inlier_fraction,
                         "Quality gate: fewest inliers per view as a share of n_vis ([0, 1])."),
  };
  return fields;
}

#undef FLUORO_INT_FIELD
#undef FLUORO_FLOAT_FIELD

void SetFields(Options& o, const nb::kwargs& kwargs) {
  for (auto [key, value] : kwargs) {
    const std::string name = nb::cast<std::string>(key);
    bool found = false;
    for (const Field& f : Fields()) {
      if (name == f.name) {
        f.set(o, value);
        found = true;
        break;
      }
    }
    if (!found) {
      std::string known;
      for (const Field& f : Fields()) known += (known.empty() ? "" : ", ") + std::string(f.name);
      throw nb::type_error(("RegistrationOptions has no field '" + name + "': expected one of " +
                            known).c_str());
    }
  }
}

nb::dict OptionsToDict(const Options& o) {
  nb::dict d;
  for (const Field& f : Fields()) d[f.name] = f.get(o);
  return d;
}

// ---- arrays <-> results --------------------------------------------------------------------

RegistrationSetup MakeSetup(const InArray<double>& landmarks, const InArray<double>& views,
                            const InArray<int32_t>& pairs, std::vector<ConeView>* storage) {
  CheckShape(landmarks, "landmarks", {-1, 3});
  *storage = UnpackViews(views);
  if (storage->size() != 2) {
    throw std::invalid_argument("got " + std::to_string(storage->size()) +
                                " views: expected exactly two (view 1, view 2)");
  }
  CheckShape(pairs, "pairs", {-1, 2});
  CheckCount(landmarks.shape(0), limits::kMaxPoints, "landmarks");
  CheckCount(pairs.shape(0), limits::kMaxPoints, "pairs");
  RegistrationSetup setup;
  setup.landmarks = landmarks.data();
  setup.num_landmarks = static_cast<int>(landmarks.shape(0));
  setup.views[0] = (*storage)[0];
  setup.views[1] = (*storage)[1];
  setup.pairs = pairs.data();
  setup.num_pairs = static_cast<int>(pairs.shape(0));
  return setup;
}

nb::dict ResultsToDict(const std::vector<RegistrationResult>& results) {
  const size_t f = results.size();
  auto poses = NewArray<double>({f, 6});
  auto matrices = NewArray<double>({f, 4, 4});
  auto objective = NewArray<double>({f});
  auto case_objective = NewArray<double>({f, 4});
  auto rms_mm = NewArray<double>({f, 2});
  auto rms_px = NewArray<double>({f, 2});
  auto rms_bone_mm = NewArray<double>({f, 2});
  auto inliers = NewArray<int32_t>({f, 2});
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
      rms_bone_mm.data()[2 * i + k] = r.rms_bone_mm[k];
      inliers.data()[2 * i + k] = r.inliers[k];
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
  out["rms_bone_mm"] = rms_bone_mm;
  out["inliers"] = inliers;
  out["n_vis"] = n_vis;
  out["mirror_case"] = mirror_case;
  out["iterations"] = iterations;
  out["converged"] = converged;
  out["status"] = status;
  return out;
}

// The inverse of ResultsToDict (arrays of the same names, shapes and dtypes).
std::vector<RegistrationResult> ResultsFromDict(const nb::dict& d, long long F) {
  auto get_f = [&](const char* key, std::initializer_list<long long> shape) {
    if (!d.contains(key)) throw std::invalid_argument(std::string("batch lacks '") + key + "'");
    InArray<double> a = nb::cast<InArray<double>>(d[key]);
    CheckShape(a, key, shape);
    return a;
  };
  auto get_i = [&](const char* key) {
    if (!d.contains(key)) throw std::invalid_argument(std::string("batch lacks '") + key + "'");
    InArray<int32_t> a = nb::cast<InArray<int32_t>>(d[key]);
    CheckShape(a, key, {F});
    return a;
  };
  const auto poses = get_f("poses", {F, 6}), matrices = get_f("matrices", {F, 4, 4});
  const auto objective = get_f("objective", {F}), case_objective = get_f("case_objective", {F, 4});
  const auto rms_mm = get_f("rms_mm", {F, 2}), rms_px = get_f("rms_px", {F, 2});
  const auto rms_bone_mm = get_f("rms_bone_mm", {F, 2});
  if (!d.contains("inliers")) throw std::invalid_argument("batch lacks 'inliers'");
  const auto inliers = nb::cast<InArray<int32_t>>(d["inliers"]);
  CheckShape(inliers, "inliers", {F, 2});
  const auto n_vis = get_i("n_vis"), mirror_case = get_i("mirror_case");
  const auto iterations = get_i("iterations"), status = get_i("status");
  if (!d.contains("converged")) throw std::invalid_argument("batch lacks 'converged'");
  const auto converged = nb::cast<InArray<bool>>(d["converged"]);
  CheckShape(converged, "converged", {F});
  std::vector<RegistrationResult> out(static_cast<size_t>(F));
  for (long long i = 0; i < F; ++i) {
    RegistrationResult& r = out[i];
    const int s = status.data()[i];
    if (s < 0 || s >= kNumRegistrationStatuses) {
      throw std::invalid_argument("frame " + std::to_string(i) + ": status code " +
                                  std::to_string(s) + " is unknown");
    }
    r.status = static_cast<RegistrationStatus>(s);
    for (int j = 0; j < 6; ++j) r.pose[j] = poses.data()[6 * i + j];
    for (int j = 0; j < 16; ++j) r.matrix[j] = matrices.data()[16 * i + j];
    for (int j = 0; j < 4; ++j) r.case_objective[j] = case_objective.data()[4 * i + j];
    r.objective = objective.data()[i];
    for (int k = 0; k < 2; ++k) {
      r.rms_mm[k] = rms_mm.data()[2 * i + k];
      r.rms_px[k] = rms_px.data()[2 * i + k];
      r.rms_bone_mm[k] = rms_bone_mm.data()[2 * i + k];
      r.inliers[k] = inliers.data()[2 * i + k];
    }
    r.n_vis = n_vis.data()[i];
    r.mirror_case = mirror_case.data()[i];
    r.iterations = iterations.data()[i];
    r.converged = converged.data()[i];
  }
  return out;
}

nb::dict RegisterBatchPy(const InArray<double>& landmarks, const InArray<double>& views,
                         const InArray<int32_t>& pairs, const InArray<double>& detections,
                         std::optional<InArray<double>> weights,
                         std::optional<InArray<double>> init_poses, const Options& options) {
  std::vector<ConeView> storage;
  const RegistrationSetup setup = MakeSetup(landmarks, views, pairs, &storage);
  const long long n = setup.num_landmarks;
  CheckShape(detections, "detections", {-1, 2, n, 2});
  const long long F = static_cast<long long>(detections.shape(0));
  CheckCount(detections.shape(0), limits::kMaxBatch, "frames");
  CheckThreads(options.num_threads);
  if (weights) CheckShape(*weights, "weights", {F, 2, n});
  if (init_poses) CheckShape(*init_poses, "init_poses", {F, 6});
  std::vector<RegistrationResult> results(static_cast<size_t>(F));
  {
    nb::gil_scoped_release release;
    RegisterBatch(setup, detections.data(), weights ? weights->data() : nullptr,
                  init_poses ? init_poses->data() : nullptr, static_cast<int>(F), options,
                  results.data());
  }
  return ResultsToDict(results);
}

nb::dict CheckViewAgreementPy(const InArray<double>& landmarks, const InArray<double>& views,
                              const InArray<int32_t>& pairs, const InArray<double>& detections,
                              std::optional<InArray<double>> weights, const nb::dict& batch,
                              const Options& options) {
  std::vector<ConeView> storage;
  const RegistrationSetup setup = MakeSetup(landmarks, views, pairs, &storage);
  const long long n = setup.num_landmarks;
  CheckShape(detections, "detections", {-1, 2, n, 2});
  const long long F = static_cast<long long>(detections.shape(0));
  CheckCount(detections.shape(0), limits::kMaxBatch, "frames");
  CheckThreads(options.num_threads);
  if (weights) CheckShape(*weights, "weights", {F, 2, n});
  const std::vector<RegistrationResult> before = ResultsFromDict(batch, F);
  std::vector<RegistrationResult> results = before;
  {
    nb::gil_scoped_release release;
    CheckViewAgreement(setup, detections.data(), weights ? weights->data() : nullptr,
                       static_cast<int>(F), options, results.data());
  }
  nb::dict out = ResultsToDict(results);
  // Which frames the check changed (the caller keeps its own copy of the others exactly).
  auto changed = NewArray<bool>({static_cast<size_t>(F)});
  auto same_bits = [](const double* a, const double* b, int count) {
    return std::memcmp(a, b, sizeof(double) * count) == 0;
  };
  for (long long i = 0; i < F; ++i) {
    const RegistrationResult &a = before[i], &b = results[i];
    changed.data()[i] =
        !(a.status == b.status && same_bits(a.pose, b.pose, 6) && same_bits(a.matrix, b.matrix, 16) &&
          same_bits(&a.objective, &b.objective, 1) && same_bits(a.rms_mm, b.rms_mm, 2) &&
          same_bits(a.rms_px, b.rms_px, 2) &&
          same_bits(a.rms_bone_mm, b.rms_bone_mm, 2) && a.inliers[0] == b.inliers[0] &&
          a.inliers[1] == b.inliers[1] && same_bits(a.case_objective, b.case_objective, 4) &&
          a.n_vis == b.n_vis && a.mirror_case == b.mirror_case && a.iterations == b.iterations &&
          a.converged == b.converged);
  }
  out["changed"] = changed;
  return out;
}

}  // namespace

void BindRegistration(nb::module_& m) {
  nb::enum_<RegistrationStatus>(m, "RegistrationStatus",
                                "Status of a registered frame; the member names are the "
                                "statuses written to the pose files.")
      .value("ok", RegistrationStatus::kOk, "solved; the pose is valid")
      .value("too_few_landmarks", RegistrationStatus::kTooFewLandmarks,
             "fewer than min_visible landmarks in both fields of view; NaN pose")
      .value("failed", RegistrationStatus::kFailed, "the solver could not evaluate; NaN pose")
      .value("one_view", RegistrationStatus::kOneView,
             "the views disagreed; the pose rests on the view that fits alone")
      .value("views_disagree", RegistrationStatus::kViewsDisagree,
             "the views disagreed and both fit alone; NaN pose")
      .value("large_residual", RegistrationStatus::kLargeResidual,
             "a view's RMS residual at the bone exceeds max_residual_mm; pose kept, not registered")
      .value("few_inliers", RegistrationStatus::kFewInliers,
             "a view has too few landmarks within max_residual_mm; pose kept, not registered")
      .value("blank_view", RegistrationStatus::kBlankView,
             "input check: a view is blank or saturated; not registered")
      .value("same_image", RegistrationStatus::kSameImage,
             "input check: both views hold the same image; not registered")
      .value("constant_detector", RegistrationStatus::kConstantDetector,
             "input check: the detections ignore the images; not registered")
      .value("ambiguous_mirror", RegistrationStatus::kAmbiguousMirror,
             "one view mirrored, the other not, by a small objective margin; not registered");

  auto cls = nb::class_<Options>(
      m, "RegistrationOptions",
      "Settings of the registration (fluororeg::RegistrationOptions). Construct with keywords, "
      "e.g. RegistrationOptions(loss='cauchy', loss_scale_mm=6.0); every field is validated "
      "(ValueError / TypeError naming it). Angles are not settings; units are in the names.");
  cls.def("__init__",
          [](Options* self, nb::kwargs kwargs) {
            Options o;
            SetFields(o, kwargs);
            ValidateRegistrationOptions(o);
            new (self) Options(o);
          },
          "Keyword arguments: any field (see the attributes).");
  for (const Field& f : Fields()) {
    const Field* fp = &f;  // Fields() is static
    cls.def_prop_rw(
        f.name, [fp](const Options& o) { return fp->get(o); },
        [fp](Options& o, nb::handle h) { fp->set(o, h); }, f.doc);
  }
  cls.def("replace",
          [](const Options& o, nb::kwargs kwargs) {
            Options copy = o;
            SetFields(copy, kwargs);
            ValidateRegistrationOptions(copy);
            return copy;
          },
          "A copy with the given fields changed (validated).")
      .def("validate", [](const Options& o) { ValidateRegistrationOptions(o); },
           "Raise ValueError when a field (or a combination) is invalid.")
      .def("to_dict", &OptionsToDict, "The fields as a dict (Python values).")
      .def("__eq__",
           [](const Options& a, const Options& b) {
             return OptionsToDict(a).equal(OptionsToDict(b));
           })
      .def("__copy__", [](const Options& o) { return o; })
      .def("__deepcopy__", [](const Options& o, nb::handle) { return o; })
      .def("__getstate__", &OptionsToDict)
      .def("__setstate__",
           [](Options* self, const nb::dict& d) {
             Options o;
             SetFields(o, nb::borrow<nb::kwargs>(d));
             new (self) Options(o);
           })
      .def("__repr__", [](const Options& o) {
        std::string s = "RegistrationOptions(";
        bool first = true;
        for (const Field& f : Fields()) {
          s += (first ? "" : ", ") + std::string(f.name) + "=" +
               nb::cast<std::string>(nb::repr(f.get(o)));
          first = false;
        }
        return s + ")";
      });

  m.def("register_batch", &RegisterBatchPy, nb::arg("landmarks"), nb::arg("views"),
        nb::arg("pairs"), nb::arg("detections"), nb::arg("weights").none(),
        nb::arg("init_poses").none(), nb::arg("options"),
        "The whole registration of F frames (fluororeg::RegisterBatch): landmarks [N, 3] mm; "
        "views [2, 16] packed; pairs [P, 2] int32; detections [F, 2, N, 2] px (NaN = not "
        "detected); weights [F, 2, N] or None; init_poses [F, 6] (rad, mm) with "
        "options.init == 'given', else None; options: RegistrationOptions. Returns a dict of "
        "arrays: poses [F, 6] (rad, mm), matrices [F, 4, 4], objective [F], case_objective "
        "[F, 4], rms_mm [F, 2], rms_px [F, 2], rms_bone_mm [F, 2], inliers [F, 2], n_vis [F], mirror_case [F], iterations [F], "
        "converged [F], status [F] (int32 RegistrationStatus values).");
  m.def("check_view_agreement", &CheckViewAgreementPy, nb::arg("landmarks"), nb::arg("views"),
        nb::arg("pairs"), nb::arg("detections"), nb::arg("weights").none(), nb::arg("batch"),
        nb::arg("options"),
        "The view-agreement check alone (fluororeg::CheckViewAgreement) on a batch given as "
        "register_batch's dict (same dtypes); returns the checked dict, with changed [F] bool "
        "(the frames the check replaced).");
  m.def(
      "triangulated_poses",
      [](const InArray<double>& landmarks, const InArray<double>& views,
         const InArray<double>& detections, std::optional<InArray<int32_t>> mirror,
         int min_points, int num_threads) {
        CheckShape(landmarks, "landmarks", {-1, 3});
        CheckCount(landmarks.shape(0), limits::kMaxPoints, "landmarks");
        const std::vector<ConeView> unpacked = UnpackViews(views);
        if (unpacked.size() != 2) {
          throw std::invalid_argument("got " + std::to_string(unpacked.size()) +
                                      " views: expected exactly two (view 1, view 2)");
        }
        const long long n = static_cast<long long>(landmarks.shape(0));
        CheckShape(detections, "detections", {-1, 2, n, 2});
        CheckCount(detections.shape(0), limits::kMaxBatch, "frames");
        if (mirror) CheckShape(*mirror, "mirror", {n});
        CheckThreads(num_threads);
        const size_t F = detections.shape(0);
        auto poses = NewArray<double>({F, 6});
        {
          nb::gil_scoped_release release;
          TriangulatedPoses(landmarks.data(), static_cast<int>(n), unpacked.data(),
                            detections.data(), static_cast<int>(F),
                            mirror ? mirror->data() : nullptr, min_points, num_threads,
                            poses.data());
        }
        return poses;
      },
      nb::arg("landmarks"), nb::arg("views"), nb::arg("detections"), nb::arg("mirror").none(),
      nb::arg("min_points"), nb::arg("num_threads"),
      "Starts from triangulated landmarks (fluororeg::TriangulatedPoses): landmarks [N, 3] mm; "
      "views [2, 16] packed; detections [F, 2, N, 2] undistorted px (NaN: not seen); mirror "
      "[N] int32 permutation or None; returns poses [F, 6] (rad, mm), six NaN where fewer "
      "than min_points landmarks are seen in both views.");
  m.def(
      "registration_status_name",
      [](int code) {
        if (code < 0 || code >= kNumRegistrationStatuses) {
          throw std::invalid_argument("status code " + std::to_string(code) + " is unknown: expected 0 to " +
                                      std::to_string(kNumRegistrationStatuses - 1));
        }
        return std::string(RegistrationStatusName(static_cast<RegistrationStatus>(code)));
      },
      nb::arg("code"),
      "The name fluororeg::RegistrationStatusName gives status `code` (the CSV files' name).");
  m.attr("NUM_REGISTRATION_STATUSES") = kNumRegistrationStatuses;
  m.def(
      "validate_pairs",
      [](const InArray<int32_t>& pairs, int num_landmarks,
         std::optional<std::vector<std::string>> names) {
        CheckShape(pairs, "pairs", {-1, 2});
        CheckCount(pairs.shape(0), limits::kMaxPoints, "pairs");
        limits::CheckRange(num_landmarks, 0, limits::kMaxPoints, "num_landmarks");
        if (names && static_cast<long long>(names->size()) != num_landmarks) {
          throw std::invalid_argument("got " + std::to_string(names->size()) + " names for " +
                                      std::to_string(num_landmarks) +
                                      " landmarks: expected one name per landmark");
        }
        ValidatePairs(pairs.data(), static_cast<int>(pairs.shape(0)), num_landmarks,
                      names ? &*names : nullptr);
      },
      nb::arg("pairs"), nb::arg("num_landmarks"), nb::arg("names").none() = nb::none(),
      "The one check of symmetric pairs [P, 2] int32: indices in [0, num_landmarks), no "
      "landmark with itself or in two pairs (ValueError naming the pair; landmarks by name "
      "when names [num_landmarks] are given).");

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
        CheckCount(landmarks.shape(0), limits::kMaxPoints, "landmarks");
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
