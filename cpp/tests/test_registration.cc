// Registration engine and metrics on synthetic dual-fluoroscope geometry.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "fluororeg/metrics.h"
#include "fluororeg/registration.h"
#include "synthetic.h"

namespace fluororeg {
namespace {

constexpr double kDeg = M_PI / 180.0;

void ExpectPoseNear(const double* got, const double* want, double tol_deg, double tol_mm) {
  double et, ep;
  PoseErrors(got, want, &et, &ep);
  EXPECT_LT(et / kDeg, tol_deg);
  EXPECT_LT(ep, tol_mm);
}

TEST(Registration, ExactLandmarksRecoverPoseFromPaperInit) {
  const testing::Scene scene;
  const RegistrationSetup setup = scene.Setup();
  std::mt19937 rng(1);
  int partially_visible = 0;
  for (int trial = 0; trial < 25; ++trial) {
    double pose[6];
    scene.RandomPose(rng, pose);
    const std::vector<double> det = scene.Detect(pose);
    const RegistrationResult r = RegisterFrame(setup, det.data(), nullptr, nullptr);
    ASSERT_EQ(r.status, RegistrationStatus::kOk);
    EXPECT_EQ(r.mirror_case, 0);
    ExpectPoseNear(r.pose, pose, 1e-6, 1e-6);
    EXPECT_LT(r.objective, 1e-12);
    EXPECT_LT(r.rms_px[0], 1e-6);
    EXPECT_LT(r.rms_px[1], 1e-6);
    if (r.n_vis < scene.n) ++partially_visible;
  }
  EXPECT_GT(partially_visible, 0);  // the scene does exercise partial visibility
}

TEST(Registration, FrobeniusModeRecoversPose) {
  const testing::Scene scene;
  const RegistrationSetup setup = scene.Setup();
  RegistrationOptions o;
  o.mode = ObjectiveMode::kFrobenius;
  std::mt19937 rng(2);
  for (int trial = 0; trial < 10; ++trial) {
    double pose[6];
    scene.RandomPose(rng, pose);
    const std::vector<double> det = scene.Detect(pose);
    const RegistrationResult r = RegisterFrame(setup, det.data(), nullptr, nullptr, o);
    ASSERT_EQ(r.status, RegistrationStatus::kOk);
    ExpectPoseNear(r.pose, pose, 1e-6, 1e-6);
  }
}

TEST(Registration, MirroredDetectionsPickTheRightCase) {
  const testing::Scene scene;
  const RegistrationSetup setup = scene.Setup();
  std::mt19937 rng(4);
  for (int mirror_case = 0; mirror_case < 4; ++mirror_case) {
    for (int trial = 0; trial < 3; ++trial) {
      double pose[6];
      scene.RandomPose(rng, pose);
      std::vector<double> det = scene.Detect(pose, 1.0, &rng);
      if (mirror_case & 1) scene.Mirror(&det, 0);
      if (mirror_case & 2) scene.Mirror(&det, 1);
      const RegistrationResult r = RegisterFrame(setup, det.data(), nullptr, nullptr);
      ASSERT_EQ(r.status, RegistrationStatus::kOk);
      EXPECT_EQ(r.mirror_case, mirror_case);
      ExpectPoseNear(r.pose, pose, 1.0, 2.0);
      for (int c = 0; c < 4; ++c) EXPECT_GE(r.case_objective[c], r.objective);
    }
  }
}

TEST(Registration, TooFewLandmarksIsReported) {
  const testing::Scene scene;
  const RegistrationSetup setup = scene.Setup();
  std::mt19937 rng(8);
  double pose[6];
  scene.RandomPose(rng, pose);
  std::vector<double> det = scene.Detect(pose);
  // Keep 3 landmarks in both views (midline ones, unaffected by mirroring); all others are missing in view 2.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  int kept = 0;
  for (int i = 0; i < scene.n; ++i) {
    const bool keep = i >= 26 && kept < 3 && !std::isnan(det[i * 2]) &&
                      !std::isnan(det[(scene.n + i) * 2]);
    if (keep) {
      ++kept;
      continue;
    }
    for (int c = 0; c < 2; ++c) det[(scene.n + i) * 2 + c] = nan;
  }
  ASSERT_EQ(kept, 3);
  const RegistrationResult r = RegisterFrame(setup, det.data(), nullptr, nullptr);
  EXPECT_EQ(r.status, RegistrationStatus::kTooFewLandmarks);
  EXPECT_STREQ(RegistrationStatusName(r.status), "too_few_landmarks");
  EXPECT_EQ(r.n_vis, 3);
  for (double p : r.pose) EXPECT_TRUE(std::isnan(p));
}

// F random poses of the scene, their detections (0.5 px noise) and starts 0.05 rad / 3 mm off.
void RandomFrames(const testing::Scene& scene, unsigned seed, int F, std::vector<double>* det,
                  std::vector<double>* init) {
  std::mt19937 rng(seed);
  std::vector<double> poses(6 * F);
  det->clear();
  init->assign(6 * F, 0.0);
  for (int f = 0; f < F; ++f) {
    scene.RandomPose(rng, &poses[6 * f]);
    const std::vector<double> d = scene.Detect(&poses[6 * f], 0.5, &rng);
    det->insert(det->end(), d.begin(), d.end());
    for (int i = 0; i < 6; ++i) (*init)[6 * f + i] = poses[6 * f + i] + (i < 3 ? 0.05 : 3.0);
  }
}

TEST(Registration, BatchMatchesSingleFramesAndUsesInitPoses) {
  const testing::Scene scene;
  const RegistrationSetup setup = scene.Setup();
  const int F = 16;
  std::vector<double> det, init;
  RandomFrames(scene, 9, F, &det, &init);
  std::vector<RegistrationResult> batch(F);
  RegistrationOptions o;
  o.num_threads = 2;
  RegisterFrames(setup, det.data(), nullptr, init.data(), F, batch.data(), o);
  for (int f = 0; f < F; ++f) {
    const RegistrationResult single =
        RegisterFrame(setup, det.data() + 4 * scene.n * f, nullptr, nullptr);
    ASSERT_EQ(batch[f].status, RegistrationStatus::kOk);
    ExpectPoseNear(batch[f].pose, single.pose, 1e-4, 1e-4);  // same minimum, other start
    EXPECT_EQ(batch[f].mirror_case, single.mirror_case);
  }
}

TEST(Registration, NaNRowOfGivenStartsIsThePaperStart) {
  const testing::Scene scene;
  const RegistrationSetup setup = scene.Setup();
  const int F = 3;
  std::vector<double> det, init;
  RandomFrames(scene, 4, F, &det, &init);
  for (int i = 0; i < 6; ++i) init[6 + i] = std::nan("");  // frame 1: no start
  std::vector<RegistrationResult> given(F), paper(F);
  RegistrationOptions o;
  o.num_threads = 1;
  RegisterFrames(setup, det.data(), nullptr, init.data(), F, given.data(), o);
  RegisterFrames(setup, det.data(), nullptr, nullptr, F, paper.data(), o);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(given[1].pose[i], paper[1].pose[i]);  // bit for bit
  EXPECT_EQ(given[1].iterations, paper[1].iterations);
  EXPECT_NE(given[0].iterations + given[2].iterations, 0);
  // A partly NaN start is an error that says what is accepted.
  init[7] = 0.1;
  try {
    RegisterFrames(setup, det.data(), nullptr, init.data(), F, given.data(), o);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("six NaN"), std::string::npos) << e.what();
  }
}

TEST(Registration, RobustLossResistsOutliers) {
  const testing::Scene scene;
  const RegistrationSetup setup = scene.Setup();
  std::mt19937 rng(12);
  double pose[6];
  scene.RandomPose(rng, pose);
  std::vector<double> det = scene.Detect(pose, 0.5, &rng);
  // Three wild landmarks (midline, so mirroring cannot explain them) in view 1.
  for (int i = 26; i < 29; ++i)
    if (!std::isnan(det[2 * i])) det[2 * i] += 60.0;
  RegistrationOptions plain, robust;
  robust.loss = RobustLoss::kCauchy;
  robust.loss_scale_mm = 1.0;
  const RegistrationResult a = RegisterFrame(setup, det.data(), nullptr, nullptr, plain);
  const RegistrationResult b = RegisterFrame(setup, det.data(), nullptr, nullptr, robust);
  double ea, pa, eb, pb;
  PoseErrors(a.pose, pose, &ea, &pa);
  PoseErrors(b.pose, pose, &eb, &pb);
  EXPECT_LT(eb / kDeg, 0.5);
  EXPECT_LT(pb, 1.0);
  EXPECT_LT(eb + pb * kDeg, ea + pa * kDeg);  // better than the plain least-squares pose
}

TEST(Registration, BadInputThrows) {
  const testing::Scene scene;
  std::mt19937 rng(1);
  double pose[6];
  scene.RandomPose(rng, pose);
  std::vector<double> det = scene.Detect(pose);
  {
    std::vector<double> lm = scene.landmarks;
    lm[5] = std::numeric_limits<double>::quiet_NaN();
    RegistrationSetup s = scene.Setup();
    s.landmarks = lm.data();
    EXPECT_THROW(RegisterFrame(s, det.data(), nullptr, nullptr), std::invalid_argument);
  }
  {
    std::vector<int32_t> pairs = scene.pairs;
    pairs[3] = 40;  // missing landmark
    RegistrationSetup s = scene.Setup();
    s.pairs = pairs.data();
    EXPECT_THROW(RegisterFrame(s, det.data(), nullptr, nullptr), std::invalid_argument);
    pairs[3] = pairs[0];  // landmark in two pairs
    EXPECT_THROW(RegisterFrame(s, det.data(), nullptr, nullptr), std::invalid_argument);
    pairs[3] = pairs[2];  // self pair
    EXPECT_THROW(RegisterFrame(s, det.data(), nullptr, nullptr), std::invalid_argument);
  }
  {
    RegistrationSetup s = scene.Setup();
    s.views[1] = s.views[0];  // parallel views
    EXPECT_THROW(RegisterFrame(s, det.data(), nullptr, nullptr), std::invalid_argument);
    s = scene.Setup();
    s.views[0].pitch_u = 0;
    EXPECT_THROW(RegisterFrame(s, det.data(), nullptr, nullptr), std::invalid_argument);
  }
  {
    std::vector<double> d = det;
    d[0] = std::numeric_limits<double>::infinity();
    EXPECT_THROW(RegisterFrame(scene.Setup(), d.data(), nullptr, nullptr), std::invalid_argument);
    d = det;
    d[0] = 10.0;
    d[1] = std::numeric_limits<double>::quiet_NaN();
    EXPECT_THROW(RegisterFrame(scene.Setup(), d.data(), nullptr, nullptr), std::invalid_argument);
    std::vector<double> w(2 * scene.n, 1.0);
    w[4] = -1;
    EXPECT_THROW(RegisterFrame(scene.Setup(), det.data(), w.data(), nullptr),
                 std::invalid_argument);
  }
  {
    RegistrationOptions o;
    o.min_visible = 3;
    EXPECT_THROW(RegisterFrame(scene.Setup(), det.data(), nullptr, nullptr, o),
                 std::invalid_argument);
    o = RegistrationOptions();
    o.mode = ObjectiveMode::kFrobenius;
    o.loss = RobustLoss::kHuber;
    EXPECT_THROW(RegisterFrame(scene.Setup(), det.data(), nullptr, nullptr, o),
                 std::invalid_argument);
  }
}

TEST(Metrics, PoseErrorsAndLandmarkDistance) {
  const double a[6] = {179 * kDeg, 0.1, -0.2, 1, 2, 3};
  const double b[6] = {-179 * kDeg, 0.1, -0.25, 1, 2.5, 2};
  double et, ep;
  PoseErrors(a, b, &et, &ep);
  EXPECT_NEAR(et, 0.05, 1e-12);  // 2 deg across the wrap is smaller than 0.05 rad
  EXPECT_NEAR(ep, 1.0, 1e-12);
  const double c[6] = {-170 * kDeg, 0.1, -0.2, 1, 2, 3};
  PoseErrors(a, c, &et, &ep);
  EXPECT_NEAR(et, 11 * kDeg, 1e-12);
  EXPECT_NEAR(WrapAngle(M_PI), -M_PI, 1e-15);
  const double lm[6] = {0, 0, 0, 10, 0, 0};
  const double p0[6] = {0, 0, 0, 0, 0, 0};
  const double p1[6] = {0, 0, M_PI / 2, 0, 0, 1};  // rotate about z by 90 deg, shift z by 1
  // Point 0 moves 1 mm; point (10, 0, 0) goes to (0, 10, 1): distance sqrt(200 + 1).
  EXPECT_NEAR(MeanLandmarkDistance(lm, 2, p0, p1), 0.5 * (1 + std::sqrt(201.0)), 1e-12);
}

}  // namespace
}  // namespace fluororeg

namespace fluororeg {
namespace {

TEST(Registration, ScreeningPicksTheSameCaseAsFullSolves) {
  const testing::Scene scene;
  const RegistrationSetup setup = scene.Setup();
  std::mt19937 rng(21);
  RegistrationOptions full;
  full.screen_iterations = 0;
  for (int trial = 0; trial < 40; ++trial) {
    double pose[6];
    scene.RandomPose(rng, pose);
    std::vector<double> det = scene.Detect(pose, 1.0, &rng);
    if (trial % 4 == 1 || trial % 4 == 3) scene.Mirror(&det, 0);
    if (trial % 4 >= 2) scene.Mirror(&det, 1);
    const RegistrationResult a = RegisterFrame(setup, det.data(), nullptr, nullptr);
    const RegistrationResult b = RegisterFrame(setup, det.data(), nullptr, nullptr, full);
    ASSERT_EQ(a.status, RegistrationStatus::kOk);
    EXPECT_EQ(a.mirror_case, b.mirror_case);
    EXPECT_EQ(a.mirror_case, trial % 4);
    EXPECT_NEAR(a.objective, b.objective, 1e-6 * b.objective);
  }
}

// Exact detections: the triangulated start is the pose itself, also with view 2's left and
// right labels swapped (the mirrored labelling fits best) and for a pose 180 deg about the
// vertical; too few landmarks seen in both views give NaN, and min_points < 3 is refused.
TEST(Registration, TriangulatedPosesRecoverThePose) {
  const testing::Scene scene;
  std::vector<int32_t> mirror(scene.n);
  for (int i = 0; i < scene.n; ++i) mirror[i] = i;
  for (size_t p = 0; p < scene.pairs.size(); p += 2) {
    mirror[scene.pairs[p]] = scene.pairs[p + 1];
    mirror[scene.pairs[p + 1]] = scene.pairs[p];
  }
  std::mt19937 rng(5);
  const int F = 6;
  std::vector<double> det, truth;
  for (int f = 0; f < F; ++f) {
    double pose[6];
    scene.RandomPose(rng, pose);
    if (f % 2 == 1) pose[2] += M_PI;
    std::vector<double> d = scene.Detect(pose);
    if (f % 3 == 2) scene.Mirror(&d, 1);
    if (f == F - 1) std::fill(d.begin() + 2 * scene.n + 6, d.end(), std::nan(""));  // 3 in view 2
    det.insert(det.end(), d.begin(), d.end());
    truth.insert(truth.end(), pose, pose + 6);
  }
  std::vector<double> poses(6 * F);
  TriangulatedPoses(scene.landmarks.data(), scene.n, scene.views, det.data(), F, mirror.data(),
                    4, 2, poses.data());
  for (int f = 0; f < F - 1; ++f) ExpectPoseNear(&poses[6 * f], &truth[6 * f], 1e-6, 1e-6);
  for (int j = 0; j < 6; ++j) EXPECT_TRUE(std::isnan(poses[6 * (F - 1) + j]));
  EXPECT_THROW(TriangulatedPoses(scene.landmarks.data(), scene.n, scene.views, det.data(), F,
                                 mirror.data(), 2, 1, poses.data()),
               std::invalid_argument);
}

TEST(Registration, NearGimbalLockPose) {
  const testing::Scene scene;
  const RegistrationSetup setup = scene.Setup();
  double c[3];
  SystemCentre(scene.views, c);
  const double pose[6] = {20 * kDeg, 89.9 * kDeg, -15 * kDeg, c[0] + 5, c[1] - 5, c[2] + 3};
  const double init[6] = {10 * kDeg, 80 * kDeg, -5 * kDeg, c[0], c[1], c[2]};
  const std::vector<double> det = scene.Detect(pose);
  const RegistrationResult r = RegisterFrame(setup, det.data(), nullptr, init);
  ASSERT_EQ(r.status, RegistrationStatus::kOk);
  // Euler angles are ill-defined near theta_y = 90 deg: compare matrices.
  double M[16];
  PoseToMatrix(pose, M);
  for (int i = 0; i < 12; ++i) EXPECT_NEAR(r.matrix[i], M[i], 1e-7);
}

// The whole batch: a frame with view 2's labels scrambled (no rigid pose fits them) rests on view 1
// (one_view); a frame whose view 2 shows another coherent pose is views_disagree; the others keep
// the plain solves exactly.
TEST(Registration, BatchViewAgreementOneViewAndViewsDisagree) {
  const testing::Scene scene;
  const RegistrationSetup setup = scene.Setup();
  const int n = scene.n, F = 12;
  std::mt19937 rng(21);
  std::vector<double> poses(6 * F), det;
  for (int f = 0; f < F; ++f) {
    scene.RandomPose(rng, &poses[6 * f]);
    const std::vector<double> d = scene.Detect(&poses[6 * f], 1.0, &rng);
    det.insert(det.end(), d.begin(), d.end());
  }
  // Frame 3: view 2's detections permuted (a cyclic shift of the landmark order).
  std::vector<double> f2(det.begin() + 4 * n * 3 + 2 * n, det.begin() + 4 * n * 4);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < 2; ++c) det[4 * n * 3 + 2 * n + 2 * i + c] = f2[2 * ((i + 7) % n) + c];
  // Frame 9: view 2 sees another pose.
  double other[6];
  for (int j = 0; j < 6; ++j) other[j] = poses[6 * 9 + j] + (j < 3 ? 30.0 * kDeg : 25.0) * (j % 2 ? -1 : 1);
  const std::vector<double> d9 = scene.Detect(other, 1.0, &rng);
  std::copy(d9.begin() + 2 * n, d9.end(), det.begin() + 4 * n * 9 + 2 * n);

  RegistrationOptions o;
  o.loss = RobustLoss::kCauchy;
  o.loss_scale_mm = 2.0;
  o.max_residual_mm = 0.0;  // the view check alone (the gate: BatchQualityGate below)
  std::vector<RegistrationResult> plain(F), checked(F);
  RegisterBatch(setup, det.data(), nullptr, nullptr, F, o, plain.data());
  o.view_outlier_ratio = 4.0;
  RegisterBatch(setup, det.data(), nullptr, nullptr, F, o, checked.data());
  EXPECT_EQ(checked[3].status, RegistrationStatus::kOneView);
  ExpectPoseNear(checked[3].pose, &poses[6 * 3], 1.5, 3.0);
  EXPECT_EQ(checked[9].status, RegistrationStatus::kViewsDisagree);
  EXPECT_TRUE(std::isnan(checked[9].pose[0]) && std::isnan(checked[9].matrix[0]));
  EXPECT_EQ(checked[9].rms_mm[1], plain[9].rms_mm[1]);  // the two-view numbers stay
  EXPECT_STREQ(RegistrationStatusName(checked[9].status), "views_disagree");
  for (int f = 0; f < F; ++f) {
    if (f == 3 || f == 9) continue;
    EXPECT_EQ(checked[f].status, RegistrationStatus::kOk) << f;
    for (int j = 0; j < 6; ++j) EXPECT_EQ(checked[f].pose[j], plain[f].pose[j]);
  }
  // The check alone on the plain results gives the same.
  std::vector<RegistrationResult> again = plain;
  CheckViewAgreement(setup, det.data(), nullptr, F, o, again.data());
  for (int f = 0; f < F; ++f) {
    EXPECT_EQ(again[f].status, checked[f].status);
    for (int j = 0; j < 6; ++j)
      EXPECT_TRUE(again[f].pose[j] == checked[f].pose[j] ||
                  (std::isnan(again[f].pose[j]) && std::isnan(checked[f].pose[j])));
  }
  // Too few registered frames for a typical residual: nothing changes.
  o.view_min_frames = F + 1;
  RegisterBatch(setup, det.data(), nullptr, nullptr, F, o, checked.data());
  EXPECT_EQ(checked[3].status, RegistrationStatus::kOk);
}

// The absolute gate: a frame with one good view and one wild view (the 5 px / 211 px
// frame: the Cauchy loss drops the wild view) is never ok, with or without the view check;
// its pose stays on record. Frames with the detector's usual error stay ok.
TEST(Registration, BatchQualityGate) {
  const testing::Scene scene;
  const RegistrationSetup setup = scene.Setup();
  const int n = scene.n, F = 8;
  std::mt19937 rng(33);
  std::vector<double> poses(6 * F), det;
  for (int f = 0; f < F; ++f) {
    scene.RandomPose(rng, &poses[6 * f]);
    const std::vector<double> d = scene.Detect(&poses[6 * f], 1.0, &rng);
    det.insert(det.end(), d.begin(), d.end());
  }
  // Frame 2: view 2's detections wild (211 px RMS), view 1's as usual.
  std::normal_distribution<double> wild(0.0, 150.0);
  for (int i = 0; i < 2 * n; ++i) det[4 * n * 2 + 2 * n + i] += wild(rng);
  RegistrationOptions o;
  o.loss = RobustLoss::kCauchy;
  o.loss_scale_mm = 2.0;
  o.max_residual_mm = 4.0;
  for (double ratio : {0.0, 4.0}) {
    o.view_outlier_ratio = ratio;
    std::vector<RegistrationResult> r(F);
    RegisterBatch(setup, det.data(), nullptr, nullptr, F, o, r.data());
    EXPECT_FALSE(IsRegistered(r[2].status)) << RegistrationStatusName(r[2].status);
    EXPECT_TRUE(r[2].status == RegistrationStatus::kLargeResidual ||
                r[2].status == RegistrationStatus::kFewInliers);
    EXPECT_TRUE(std::isfinite(r[2].pose[0]));  // kept for inspection
    EXPECT_FALSE(r[2].rms_bone_mm[1] <= o.max_residual_mm);  // NaN without inliers
    for (int f = 0; f < F; ++f) {
      if (f == 2) continue;
      EXPECT_EQ(r[f].status, RegistrationStatus::kOk) << f;
      // 1 px noise at 0.6 mm/px, magnification about 1.8: about 0.5 mm at the bone.
      for (int k = 0; k < 2; ++k) {
        EXPECT_LT(r[f].rms_bone_mm[k], 0.7);
        EXPECT_LT(r[f].rms_bone_mm[k], r[f].rms_mm[k]);  // magnified on the intensifier
        EXPECT_EQ(r[f].inliers[k], r[f].n_vis);
      }
    }
  }
  // Off: the frame keeps its status from the solve.
  o.max_residual_mm = 0.0;
  o.view_outlier_ratio = 0.0;
  const RegistrationResult off = RegisterFrame(setup, det.data() + 4 * n * 2, nullptr, nullptr, o);
  EXPECT_EQ(off.status, RegistrationStatus::kOk);
}

TEST(Registration, QualityGateLargeResidualBeforeFewInliers) {
  RegistrationOptions o;
  o.max_residual_mm = 3.0;
  o.min_inliers_per_view = 4;
  o.min_inlier_fraction = 0.5;
  RegistrationResult r;
  r.status = RegistrationStatus::kOk;
  r.n_vis = 20;
  r.rms_bone_mm[0] = 1.0;
  r.rms_bone_mm[1] = 2.5;
  r.inliers[0] = 20;
  r.inliers[1] = 9;  // fewer than half of 20
  RegistrationResult a = r;
  ApplyQualityGate(o, &a);
  EXPECT_EQ(a.status, RegistrationStatus::kFewInliers);
  EXPECT_STREQ(RegistrationStatusName(a.status), "few_inliers");
  a = r;
  a.inliers[1] = 10;
  ApplyQualityGate(o, &a);
  EXPECT_EQ(a.status, RegistrationStatus::kOk);
  a = r;
  a.rms_bone_mm[1] = 3.5;
  ApplyQualityGate(o, &a);
  EXPECT_EQ(a.status, RegistrationStatus::kLargeResidual);
  EXPECT_STREQ(RegistrationStatusName(a.status), "large_residual");
  a = r;
  a.status = RegistrationStatus::kTooFewLandmarks;  // only frames with a pose are gated
  a.rms_bone_mm[1] = 30.0;
  ApplyQualityGate(o, &a);
  EXPECT_EQ(a.status, RegistrationStatus::kTooFewLandmarks);
  o.max_residual_mm = 0.0;  // off
  a = r;
  a.rms_bone_mm[1] = 30.0;
  ApplyQualityGate(o, &a);
  EXPECT_EQ(a.status, RegistrationStatus::kOk);
  for (int s = 0; s < kNumRegistrationStatuses; ++s)
    EXPECT_STRNE(RegistrationStatusName(static_cast<RegistrationStatus>(s)), "unknown") << s;
}

TEST(Registration, BatchPreviousInitFollowsTheRecording) {
  const testing::Scene scene;
  const RegistrationSetup setup = scene.Setup();
  const int n = scene.n, F = 8;
  std::mt19937 rng(5);
  double start[6];
  scene.RandomPose(rng, start);
  std::vector<double> poses(6 * F), det;
  for (int f = 0; f < F; ++f) {
    for (int j = 0; j < 6; ++j) poses[6 * f + j] = start[j] + f * (j < 3 ? 1.0 * kDeg : 1.5);
    const std::vector<double> d = scene.Detect(&poses[6 * f], 0.5, &rng);
    det.insert(det.end(), d.begin(), d.end());
  }
  std::fill(det.begin() + 4 * n * 4, det.begin() + 4 * n * 5, std::nan(""));  // frame 4: nothing
  RegistrationOptions o;
  std::vector<RegistrationResult> paper(F), previous(F);
  RegisterBatch(setup, det.data(), nullptr, nullptr, F, o, paper.data());
  o.init = InitMode::kPrevious;
  RegisterBatch(setup, det.data(), nullptr, nullptr, F, o, previous.data());
  int fewer = 0;
  for (int f = 0; f < F; ++f) {
    ASSERT_EQ(previous[f].status, paper[f].status) << f;
    if (f == 4) {
      EXPECT_EQ(previous[f].status, RegistrationStatus::kTooFewLandmarks);
      continue;
    }
    ExpectPoseNear(previous[f].pose, paper[f].pose, 1e-6, 1e-6);
    if (f > 0 && previous[f].iterations < paper[f].iterations) ++fewer;
  }
  EXPECT_GT(fewer, F / 2);  // a near start needs fewer iterations
  // 'given' needs the poses; poses need 'given'.
  o.init = InitMode::kGiven;
  EXPECT_THROW(RegisterBatch(setup, det.data(), nullptr, nullptr, F, o, paper.data()),
               std::invalid_argument);
  o.init = InitMode::kPaper;
  EXPECT_THROW(RegisterBatch(setup, det.data(), nullptr, poses.data(), F, o, paper.data()),
               std::invalid_argument);
  o.view_outlier_ratio = 4.0;
  o.view_joint_ratio = 5.0;  // must not exceed the outlier ratio
  EXPECT_THROW(RegisterBatch(setup, det.data(), nullptr, nullptr, F, o, paper.data()),
               std::invalid_argument);
}

TEST(Registration, ValidatePairsNamesTheProblem) {
  const int32_t ok[4] = {0, 1, 2, 3}, self[2] = {2, 2}, twice[4] = {0, 1, 1, 2}, out[2] = {0, 9};
  EXPECT_NO_THROW(ValidatePairs(ok, 2, 4));
  EXPECT_THROW(ValidatePairs(self, 1, 4), std::invalid_argument);
  EXPECT_THROW(ValidatePairs(twice, 2, 4), std::invalid_argument);
  EXPECT_THROW(ValidatePairs(out, 1, 4), std::invalid_argument);
  const std::vector<std::string> names = {"a", "b", "c", "d"};
  try {
    ValidatePairs(twice, 2, 4, &names);
    FAIL() << "expected an exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("landmark 'b' is in two pairs"), std::string::npos);
  }
}

}  // namespace
}  // namespace fluororeg
