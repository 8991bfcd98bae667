// C++ tests of the intensity refinement through the public C++ API (no Python).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>
#include <utility>
#include <vector>

#include "fluororeg/geometry.h"
#include "fluororeg/refine.h"
#include "fluororeg/so3.h"
#include "refine/refine_internal.h"
#include "fluororeg/render.h"

namespace fluororeg {
namespace {

// An asymmetric phantom (a skull-like shell with three inner blobs of different attenuation)
// in a 48^3 volume of 3 mm voxels centred on the model origin.
struct Phantom {
  int n = 48;
  double h = 3.0;
  std::vector<float> data;
  VolumeGrid grid;
  Phantom() {
    data.assign(static_cast<size_t>(n) * n * n, 0.f);
    const double c = 0.5 * (n - 1);
    struct Blob {
      double x, y, z, rx, ry, rz, mu;
    };
    const Blob blobs[] = {{0, 0, 0, 60, 50, 55, 0.02},  {-20, 10, 5, 12, 20, 8, 0.03},
                          {25, -15, -10, 8, 8, 16, 0.04}, {5, 25, 20, 15, 6, 6, 0.035}};
    for (int k = 0; k < n; ++k)
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < n; ++i) {
          const double x = (i - c) * h, y = (j - c) * h, z = (k - c) * h;
          float v = 0.f;
          for (const Blob& b : blobs) {
            const double dx = (x - b.x) / b.rx, dy = (y - b.y) / b.ry, dz = (z - b.z) / b.rz;
            if (dx * dx + dy * dy + dz * dz <= 1.0) v = static_cast<float>(b.mu);
          }
          data[(static_cast<size_t>(k) * n + j) * n + i] = v;
        }
    grid.data = data.data();
    grid.nx = grid.ny = grid.nz = n;
    grid.model_from_voxel = {{h, 0, 0, -c * h, 0, h, 0, -c * h, 0, 0, h, -c * h}};
  }
};

// Two views 100 degrees apart looking at the origin, 64 x 64 px of 1.8 mm.
void MakeViews(ConeView views[2]) {
  for (int s = 0; s < 2; ++s) {
    const double a = (s == 0 ? -50.0 : 50.0) * M_PI / 180.0;
    const double d[3] = {std::sin(a), std::cos(a), 0.0};  // source -> intensifier
    ConeView& v = views[s];
    for (int c = 0; c < 3; ++c) {
      v.source[c] = -650.0 * d[c];
      v.intensifier_centre[c] = 400.0 * d[c];
    }
    v.v[0] = 0, v.v[1] = 0, v.v[2] = -1;
    v.u[0] = v.v[1] * d[2] - v.v[2] * d[1];
    v.u[1] = v.v[2] * d[0] - v.v[0] * d[2];
    v.u[2] = v.v[0] * d[1] - v.v[1] * d[0];
    v.pitch_u = v.pitch_v = 1.8;
    v.width = v.height = 64;
  }
}

double AngleBetween(const double* a, const double* b) {
  double Ra[9], Rb[9];
  RotationFromEulerZYX(a, Ra);
  RotationFromEulerZYX(b, Rb);
  double tr = 0;  // trace(Ra Rb^T)
  for (int i = 0; i < 3; ++i)
    for (int k = 0; k < 3; ++k) tr += Ra[3 * i + k] * Rb[3 * i + k];
  return std::acos(std::max(-1.0, std::min(1.0, 0.5 * (tr - 1)))) * 180.0 / M_PI;
}

class RefineTest : public ::testing::Test {
 protected:
  Phantom phantom;
  ConeView views[2];
  std::vector<double> truth{0.10, -0.05, 0.15, 3.0, -2.0, 1.0};  // rad, mm
  std::vector<float> images;                                     // [1, 2, 64, 64]
  RefineInput input;
  void SetUp() override {
    MakeViews(views);
    images.assign(2 * 64 * 64, 0.f);
    for (int v = 0; v < 2; ++v)
      RenderConeDrr(phantom.grid, &views[v], truth.data(), 1, images.data() + v * 64 * 64);
    input.volume = phantom.grid;
    input.views[0] = views[0];
    input.views[1] = views[1];
    input.images = images.data();
  }
  // A start about 4 deg and 4 mm from the truth (rad, mm).
  std::vector<double> StartNear4DegAnd4Mm() const {
    return {truth[0] + 0.04, truth[1] - 0.04, truth[2] + 0.03,
            truth[3] + 2.5,  truth[4] - 2.0,  truth[5] + 2.0};
  }
};

TEST_F(RefineTest, RecoversPoseFrom4DegAnd4Mm) {
  const std::vector<double> start = StartNear4DegAnd4Mm();
  // The Jacobian: the renderer's pose gradients (default), central differences every iteration,
  // central differences then Broyden updates.
  for (int jacobian = 0; jacobian < 3; ++jacobian) {
    SCOPED_TRACE(jacobian == 0 ? "analytic" : jacobian == 1 ? "finite differences" : "Broyden updates");
    RefineOptions options;
    options.num_levels = 2;
    options.analytic_jacobian = jacobian == 0;
    options.broyden_updates = jacobian == 2;
    RefineResult r;
    RefineFrames(input, start.data(), 1, &r, options);
    EXPECT_EQ(r.status, RefineStatus::kConverged);
    EXPECT_TRUE(r.converged);
    EXPECT_LT(AngleBetween(r.pose, truth.data()), 0.2);
    for (int c = 3; c < 6; ++c) EXPECT_NEAR(r.pose[c], truth[c], 0.2);
    EXPECT_GT(r.similarity[0], 0.95);
    EXPECT_GT(r.similarity[1], 0.95);
    EXPECT_GT(r.iterations, 0);
    EXPECT_NEAR(r.rotation_change_deg, AngleBetween(r.pose, start.data()), 1e-6);
  }
}

// The normal equations the refinement forms from the renderer's pose gradients, without making
// the Jacobian (sums over the region), against J^T J and J^T r of the residuals' central
// differences along the same scaled parameters, at a pose about 4 deg / 4 mm off; the cost is
// r . r to rounding. Both similarities.
TEST_F(RefineTest, NormalEquationsMatchCentralDifferencesOfTheResiduals) {
  const std::vector<double> pose = StartNear4DegAnd4Mm();
  for (RefineSimilarity similarity : {RefineSimilarity::kGradientCorrelation, RefineSimilarity::kNcc}) {
    SCOPED_TRACE(similarity == RefineSimilarity::kNcc ? "NCC" : "gradient correlation");
    RefineOptions options;
    options.num_levels = 1;
    options.similarity = similarity;
    // Fine ray steps: the render's sum over its steps then follows the integral, whose
    // derivative the pose gradients are (3 mm steps through the phantom's sharp blobs make the
    // differences jump as samples shift along the rays: A was 20 % off along the rays).
    options.step_voxels = 0.25;
    const double L =
        internal::LineariseLevel(input, options, 0, pose.data(), pose.data(), 1).lever_mm;
    ASSERT_GT(L, 0);
    const double h = 0.05;  // mm (rotations: mm at the lever)
    double R[9];
    RotationFromEulerZYX(pose.data(), R);
    std::vector<double> probes = pose;  // [13, 6]: the pose, then +h and -h along each parameter
    for (int j = 0; j < 6; ++j)
      for (double step : {h, -h}) {
        std::vector<double> p = pose;
        if (j < 3) {
          double w[3] = {0, 0, 0}, dR[9], moved[9];
          w[j] = step / L;
          ExpSO3(w, dR);
          MultiplyRotations(dR, R, moved);
          EulerFromRotation(moved, p.data());
        } else {
          p[j] += step;
        }
        probes.insert(probes.end(), p.begin(), p.end());
      }
    const internal::LevelLinearisation lin =
        internal::LineariseLevel(input, options, 0, pose.data(), probes.data(), 13);
    const size_t n = lin.residuals.size() / 13;
    ASSERT_GT(n, 500u);
    const double* r0 = lin.residuals.data();
    double rr = 0;
    for (size_t i = 0; i < n; ++i) rr += r0[i] * r0[i];
    EXPECT_NEAR(lin.cost, rr, 1e-10 * rr);
    double A[36] = {}, g[6] = {};  // of the differences' Jacobian
    for (size_t i = 0; i < n; ++i) {
      double Ji[6];
      for (int j = 0; j < 6; ++j) {
        const double* plus = r0 + (1 + 2 * j) * n;
        Ji[j] = (plus[i] - plus[n + i]) / (2 * h);
      }
      for (int j = 0; j < 6; ++j) {
        g[j] += Ji[j] * r0[i];
        for (int k = 0; k < 6; ++k) A[6 * j + k] += Ji[j] * Ji[k];
      }
    }
    double dA = 0, nA = 0, dg = 0, ng = 0;
    for (int j = 0; j < 36; ++j) dA += std::pow(lin.A[j] - A[j], 2), nA += A[j] * A[j];
    for (int j = 0; j < 6; ++j) dg += std::pow(lin.g[j] - g[j], 2), ng += g[j] * g[j];
    EXPECT_GT(ng, 0);
    EXPECT_LT(std::sqrt(dA / nA), 0.03);
    EXPECT_LT(std::sqrt(dg / ng), 0.03);
    for (int j = 0; j < 6; ++j)
      for (int k = 0; k < 6; ++k) EXPECT_EQ(lin.A[6 * j + k], lin.A[6 * k + j]);
  }
}

// A frame that starts at its optimum (one level: the images are this renderer's DRRs at the
// truth) ends after one try: a failed step already within the tolerance is not shortened and
// rendered again (that took eight tries before).
TEST_F(RefineTest, StartAtTheOptimumTakesOneTry) {
  RefineOptions options;
  options.num_levels = 1;
  const double nan = std::nan("");
  const double starts[12] = {truth[0], truth[1], truth[2], truth[3], truth[4], truth[5],
                             nan,      0,        0,        0,        0,        0};
  RefineResult r[2];
  RefineFrames(input, starts, 2, r, options);
  EXPECT_EQ(r[0].status, RefineStatus::kConverged);
  EXPECT_LT(AngleBetween(r[0].pose, truth.data()), 0.01);
  EXPECT_LE(r[0].iterations, 1);
  // The region; the start with its Jacobian; one try; the final region and similarity.
  EXPECT_EQ(r[0].render_calls, 5);
  // At least the 32-pixel regions (options.min_roi_pixels) of both views at 1 + 1 poses (the
  // start with its pose gradients, the try).
  EXPECT_GT(r[0].rendered_rays, 2LL * 2 * 32);
  options.analytic_jacobian = false;  // the start and 12 finite differences
  RefineResult fd;
  RefineFrames(input, starts, 1, &fd, options);
  EXPECT_EQ(fd.render_calls, 5);
  EXPECT_GT(fd.rendered_rays, 2LL * 13 * 32);
  EXPECT_EQ(r[1].render_calls, 0);  // no start: nothing rendered
  EXPECT_EQ(r[1].rendered_rays, 0);
}

// A frame whose pose moves beyond the gate's limits at the coarse level stops there, flagged:
// it renders less than the same frame with limits it stays within.
TEST_F(RefineTest, MovedFarStopsAfterTheLevel) {
  const std::vector<double> start = StartNear4DegAnd4Mm();
  RefineOptions options;
  options.num_levels = 2;
  RefineResult free, limited;
  RefineFrames(input, start.data(), 1, &free, options);
  EXPECT_EQ(free.status, RefineStatus::kConverged);
  options.max_rotation_change_deg = 0.5;  // the start is about 4 deg off
  RefineFrames(input, start.data(), 1, &limited, options);
  EXPECT_EQ(limited.status, RefineStatus::kMovedFar);
  EXPECT_GT(limited.rotation_change_deg, 0.5);
  EXPECT_LT(limited.iterations, free.iterations);
  EXPECT_LT(limited.render_calls, free.render_calls);
  EXPECT_LT(limited.rendered_rays, free.rendered_rays);
}

// Volumes prepared once give every call exactly the results of volumes prepared per call; they
// hold their own copy of the voxels.
TEST_F(RefineTest, PreparedVolumesGiveTheSameResults) {
  const std::vector<double> start = StartNear4DegAnd4Mm();
  RefineOptions options;
  options.num_levels = 2;
  RefineResult per_call;
  RefineFrames(input, start.data(), 1, &per_call, options);
  double sim_per_call[2];
  EvaluateRefineSimilarity(input, start.data(), 1, 1, sim_per_call, nullptr, options);

  std::vector<float> voxels = phantom.data;  // prepared from a copy that then changes
  VolumeGrid grid = phantom.grid;
  grid.data = voxels.data();
  const RefineVolumes prepared(grid, VolumeGrid{}, 3);  // more levels than the calls need
  EXPECT_EQ(prepared.num_levels(), 3);
  std::fill(voxels.begin(), voxels.end(), 0.f);
  RefineInput in = input;
  in.volume = VolumeGrid{};  // not read
  in.prepared = &prepared;
  for (int call = 0; call < 2; ++call) {
    SCOPED_TRACE("call " + std::to_string(call));
    RefineResult r;
    RefineFrames(in, start.data(), 1, &r, options);
    EXPECT_EQ(r.status, per_call.status);
    for (int c = 0; c < 6; ++c) EXPECT_EQ(r.pose[c], per_call.pose[c]);
    EXPECT_EQ(r.similarity_total, per_call.similarity_total);
    EXPECT_EQ(r.rendered_rays, per_call.rendered_rays);
    double sim[2];
    EvaluateRefineSimilarity(in, start.data(), 1, 1, sim, nullptr, options);
    EXPECT_EQ(sim[0], sim_per_call[0]);
    EXPECT_EQ(sim[1], sim_per_call[1]);
  }
  options.num_levels = 4;
  RefineResult r;
  EXPECT_THROW(RefineFrames(in, start.data(), 1, &r, options), std::invalid_argument);
  EXPECT_THROW(RefineVolumes(grid, VolumeGrid{}, 0), std::invalid_argument);
  grid.nx = 0;
  EXPECT_THROW(RefineVolumes(grid, VolumeGrid{}, 2), std::invalid_argument);
}

TEST_F(RefineTest, SimilarityPeaksAtTheTruePose) {
  RefineOptions options;
  options.num_levels = 1;
  double at_truth[2], off[2];
  EvaluateRefineSimilarity(input, truth.data(), 1, 0, at_truth, nullptr, options);
  std::vector<double> moved = truth;
  moved[3] += 3.0;
  EvaluateRefineSimilarity(input, moved.data(), 1, 0, off, nullptr, options);
  for (int v = 0; v < 2; ++v) {
    EXPECT_NEAR(at_truth[v], 1.0, 1e-6);  // DRR against itself
    EXPECT_LT(off[v], at_truth[v] - 0.05);
  }
}

TEST_F(RefineTest, NaNStartIsInvalidAndFarStartIsFlagged) {
  RefineOptions options;
  options.num_levels = 2;
  options.max_rotation_change_deg = 10;
  const double nan = std::nan("");
  const double starts[12] = {nan, 0, 0, 0, 0, 0, truth[0] + 0.9, truth[1], truth[2] - 0.9,
                             truth[3] + 40, truth[4], truth[5]};
  RefineResult r[2];
  RefineFrames(input, starts, 2, r, options);
  EXPECT_EQ(r[0].status, RefineStatus::kInvalidStart);
  EXPECT_FALSE(r[0].converged);
  EXPECT_FALSE(r[1].converged);
  EXPECT_TRUE(r[1].status == RefineStatus::kMovedFar || r[1].status == RefineStatus::kLowSimilarity ||
              r[1].status == RefineStatus::kNoOverlap);
}

TEST(Refine, SimilaritiesOfKnownImages) {
  std::mt19937 rng(1);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> a(30 * 20), neg(a.size()), zero(a.size(), 0.f);
  for (auto& x : a) x = g(rng);
  for (size_t i = 0; i < a.size(); ++i) neg[i] = 5.f - 2.f * a[i];
  EXPECT_NEAR(GradientCorrelation(a.data(), a.data(), nullptr, 30, 20), 1.0, 1e-12);
  EXPECT_NEAR(GradientCorrelation(a.data(), neg.data(), nullptr, 30, 20), -1.0, 1e-6);
  EXPECT_NEAR(NormalizedCrossCorrelation(a.data(), neg.data(), nullptr, 30, 20), -1.0, 1e-6);
  EXPECT_EQ(NormalizedCrossCorrelation(a.data(), zero.data(), nullptr, 30, 20), 0.0);
}

TEST(Refine, PyramidViewKeepsPixelCentres) {
  ConeView views[2];
  MakeViews(views);
  const ConeView l1 = PyramidView(views[0], 1);
  EXPECT_EQ(l1.width, 32);
  EXPECT_DOUBLE_EQ(l1.pitch_u, 3.6);
  // 64 px halve exactly: same centre.
  for (int c = 0; c < 3; ++c) EXPECT_NEAR(l1.intensifier_centre[c], views[0].intensifier_centre[c], 1e-9);
  ConeView odd = views[0];
  odd.width = 65;  // level 1 drops the last column: its centre moves half a pixel to -u
  const ConeView o1 = PyramidView(odd, 1);
  for (int c = 0; c < 3; ++c)
    EXPECT_NEAR(o1.intensifier_centre[c], odd.intensifier_centre[c] - 0.5 * 1.8 * odd.u[c], 1e-9);
}

TEST_F(RefineTest, PerFrameViewWeightsMatchTheOptionsWeights) {
  // view_weights (1, 0) for a frame refine it exactly as weight_view2 = 0 in the options does.
  const double start[6] = {truth[0] + 0.02, truth[1] - 0.02, truth[2] + 0.02,
                           truth[3] + 1.5,  truth[4] - 1.0,  truth[5] + 1.0};
  RefineOptions options;
  options.num_levels = 2;
  RefineResult by_frame, by_options;
  RefineInput weighted = input;
  const double weights[2] = {1.0, 0.0};
  weighted.view_weights = weights;
  RefineFrames(weighted, start, 1, &by_frame, options);
  RefineOptions view1_only = options;
  view1_only.weight_view2 = 0;
  RefineFrames(input, start, 1, &by_options, view1_only);
  for (int c = 0; c < 6; ++c) EXPECT_EQ(by_frame.pose[c], by_options.pose[c]);
  EXPECT_EQ(by_frame.similarity_total, by_frame.similarity[0]);  // view 2 reported, not counted
  EXPECT_TRUE(std::isfinite(by_frame.similarity[1]));
  EXPECT_TRUE(by_frame.converged);
  const double none[2] = {0.0, 0.0}, negative[2] = {-1.0, 1.0};
  for (const double* w : {none, negative}) {
    weighted.view_weights = w;
    EXPECT_THROW(RefineFrames(weighted, start, 1, &by_frame, options), std::invalid_argument);
  }
}

// Five frames of the same images from other starts (one without a start, one far off, so that
// they take other numbers of renders): results [5] of RefineFrames or of the gathered driver.
struct FiveFrames {
  std::vector<float> images;
  std::vector<double> starts;
  FiveFrames(const std::vector<float>& one, const std::vector<double>& truth) {
    for (int f = 0; f < 5; ++f) images.insert(images.end(), one.begin(), one.end());
    const double nan = std::nan("");
    const double d[5][6] = {{0.04, -0.04, 0.03, 2.5, -2.0, 2.0}, {nan, 0, 0, 0, 0, 0},
                            {-0.03, 0.02, 0.0, -1.0, 1.5, 0.5}, {0.3, 0, -0.3, 30, 0, 0},
                            {0.0, 0.05, -0.02, 0.5, 0.5, -2.5}};
    for (int f = 0; f < 5; ++f)
      for (int c = 0; c < 6; ++c) starts.push_back(truth[c] + d[f][c]);
  }
};

TEST_F(RefineTest, GatheredRendersGiveTheSameResults) {
  const FiveFrames five(images, truth);
  RefineInput in = input;
  in.images = five.images.data();
  RefineOptions options;
  options.num_levels = 2;
  RefineResult alone[5];
  RefineFrames(in, five.starts.data(), 5, alone, options);
  EXPECT_EQ(alone[0].status, RefineStatus::kConverged);
  EXPECT_EQ(alone[1].status, RefineStatus::kInvalidStart);
  // Frames in flight, and the gathered calls' own threads (here rendering on the CPU).
  for (auto [in_flight, render_threads] : {std::pair{1, 1}, {2, 1}, {5, 1}, {5, 3}, {64, 2}}) {
    options.cuda_render_threads = render_threads;
    SCOPED_TRACE("frames in flight: " + std::to_string(in_flight) + ", render threads " +
                 std::to_string(render_threads));
    RefineResult gathered[5];
    internal::RefineFramesGathered(in, five.starts.data(), 5, gathered, options, in_flight);
    for (int f = 0; f < 5; ++f) {
      EXPECT_EQ(gathered[f].status, alone[f].status) << "frame " << f;
      EXPECT_EQ(gathered[f].iterations, alone[f].iterations) << "frame " << f;
      if (f == 1) continue;  // no start: NaN pose
      for (int c = 0; c < 6; ++c) EXPECT_EQ(gathered[f].pose[c], alone[f].pose[c]) << "frame " << f;
      EXPECT_EQ(gathered[f].similarity_total, alone[f].similarity_total) << "frame " << f;
      EXPECT_EQ(gathered[f].render_calls, alone[f].render_calls) << "frame " << f;
      EXPECT_EQ(gathered[f].rendered_rays, alone[f].rendered_rays) << "frame " << f;
    }
  }
  RefineResult r[5];
  EXPECT_THROW(internal::RefineFramesGathered(in, five.starts.data(), 5, r, options, 0),
               std::invalid_argument);
}

TEST_F(RefineTest, CudaRendersGiveTheCpuResult) {
  if (!CudaAvailable()) GTEST_SKIP() << "no CUDA device";
  const FiveFrames five(images, truth);  // on CUDA the frames' renders are gathered
  RefineInput in = input;
  in.images = five.images.data();
  RefineOptions options;
  options.num_levels = 2;
  RefineResult cpu[5], gpu[5];
  RefineFrames(in, five.starts.data(), 5, cpu, options);
  options.device = Device::kCuda;
  RefineFrames(in, five.starts.data(), 5, gpu, options);
  for (int f = 0; f < 5; ++f) {
    EXPECT_EQ(gpu[f].status, cpu[f].status) << "frame " << f;
    if (f == 1) continue;  // no start
    EXPECT_LT(AngleBetween(gpu[f].pose, cpu[f].pose), 0.01) << "frame " << f;
    for (int c = 3; c < 6; ++c) EXPECT_NEAR(gpu[f].pose[c], cpu[f].pose[c], 0.01) << "frame " << f;
    EXPECT_NEAR(gpu[f].similarity_total, cpu[f].similarity_total, 1e-4) << "frame " << f;
  }
  // Prepared volumes keep their device copies between calls, with the same results.
  const RefineVolumes prepared(phantom.grid, VolumeGrid{}, 2);
  in.prepared = &prepared;
  for (int call = 0; call < 2; ++call) {
    RefineResult again[5];
    RefineFrames(in, five.starts.data(), 5, again, options);
    for (int f = 0; f < 5; ++f) {
      EXPECT_EQ(again[f].status, gpu[f].status) << "call " << call << ", frame " << f;
      if (f == 1) continue;
      for (int c = 0; c < 6; ++c)
        EXPECT_NEAR(again[f].pose[c], gpu[f].pose[c], 1e-9) << "call " << call << ", frame " << f;
    }
  }
}

TEST_F(RefineTest, BadInputThrowsInvalidArgument) {
  RefineResult r;
  RefineOptions bad;
  bad.num_levels = 0;
  EXPECT_THROW(RefineFrames(input, truth.data(), 1, &r, bad), std::invalid_argument);
  bad = RefineOptions();
  bad.weight_view1 = bad.weight_view2 = 0;
  EXPECT_THROW(RefineFrames(input, truth.data(), 1, &r, bad), std::invalid_argument);
  bad = RefineOptions();
  bad.num_levels = 4;  // 64 px >> 3 = 8 px: too small
  EXPECT_THROW(RefineFrames(input, truth.data(), 1, &r, bad), std::invalid_argument);
  bad = RefineOptions();
  bad.broyden_updates = true;  // with the analytic Jacobian (the default): nothing to update
  EXPECT_THROW(RefineFrames(input, truth.data(), 1, &r, bad), std::invalid_argument);
  bad = RefineOptions();
  bad.cuda_render_threads = 0;
  EXPECT_THROW(RefineFrames(input, truth.data(), 1, &r, bad), std::invalid_argument);
  RefineInput other = input;
  other.views[1].width = 32;
  EXPECT_THROW(RefineFrames(other, truth.data(), 1, &r), std::invalid_argument);
  other = input;
  other.images = nullptr;
  EXPECT_THROW(RefineFrames(other, truth.data(), 1, &r), std::invalid_argument);
  double sim[2];
  EXPECT_THROW(EvaluateRefineSimilarity(input, truth.data(), 1, 5, sim, nullptr), std::invalid_argument);
}

}  // namespace
}  // namespace fluororeg
