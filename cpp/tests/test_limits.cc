// The size limits and overflow-checked size arithmetic (fluororeg/limits.h), and the renderers'
// checks that use them.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "fluororeg/limits.h"
#include "fluororeg/render.h"

namespace fluororeg {
namespace {

constexpr size_t kSizeMax = std::numeric_limits<size_t>::max();

// The message of the std::invalid_argument `f` throws ("" when it throws none).
template <typename F>
std::string InvalidArgumentMessage(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(CheckedMul, ExactProductsPass) {
  EXPECT_EQ(limits::CheckedMul(0, kSizeMax, "x"), 0u);
  EXPECT_EQ(limits::CheckedMul(kSizeMax, 0, "x"), 0u);
  EXPECT_EQ(limits::CheckedMul(1, kSizeMax, "x"), kSizeMax);
  EXPECT_EQ(limits::CheckedMul(size_t(1) << 32, (size_t(1) << 32) - 1, "x"),
            (size_t(1) << 32) * ((size_t(1) << 32) - 1));
  EXPECT_EQ(limits::CheckedProduct({}, "x"), 1u);
  EXPECT_EQ(limits::CheckedProduct({16, 1024, 1024}, "x"), size_t(16) << 20);
}

TEST(CheckedMul, OverflowThrowsNamingTheSizes) {
  EXPECT_THROW(limits::CheckedMul(size_t(1) << 32, size_t(1) << 32, "x"), std::invalid_argument);
  EXPECT_THROW(limits::CheckedMul(kSizeMax, 2, "x"), std::invalid_argument);
  EXPECT_THROW(limits::CheckedMul(kSizeMax / 3 + 1, 3, "x"), std::invalid_argument);
  // The wrap of the reported crash: 16 x 2^30 x 2^30 floats.
  const std::string msg = InvalidArgumentMessage([] {
    limits::CheckedProduct({16, size_t(1) << 30, size_t(1) << 30, sizeof(float)}, "images");
  });
  EXPECT_NE(msg.find("images"), std::string::npos) << msg;
  EXPECT_NE(msg.find("overflows"), std::string::npos) << msg;
}

TEST(CheckedArrayBytes, EnforcesTheOutputLimit) {
  EXPECT_EQ(limits::CheckedArrayBytes({2, 3}, 4, "a"), 24u);
  // Exactly the limit passes, one element more does not.
  const size_t limit_floats = static_cast<size_t>(limits::kMaxOutputBytes) / 4;
  EXPECT_EQ(limits::CheckedArrayBytes({limit_floats}, 4, "a"),
            static_cast<size_t>(limits::kMaxOutputBytes));
  const std::string msg =
      InvalidArgumentMessage([&] { limits::CheckedArrayBytes({limit_floats + 1}, 4, "images"); });
  EXPECT_NE(msg.find("images of shape (" + std::to_string(limit_floats + 1) + ")"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("at most " + std::to_string(limits::kMaxOutputBytes)), std::string::npos)
      << msg;
  // Products that wrap size_t are reported, not wrapped; an empty array is empty whatever its
  // other sides.
  EXPECT_THROW(limits::CheckedArrayBytes({16, size_t(1) << 30, size_t(1) << 30}, 4, "images"),
               std::invalid_argument);
  EXPECT_THROW(limits::CheckedArrayBytes({kSizeMax, kSizeMax}, 1, "a"), std::invalid_argument);
  EXPECT_EQ(limits::CheckedArrayBytes({kSizeMax, kSizeMax, 0}, 8, "a"), 0u);
}

TEST(CheckRange, NamesTheValueAndTheRange) {
  EXPECT_NO_THROW(limits::CheckRange(0, 0, 5, "n"));
  EXPECT_NO_THROW(limits::CheckRange(5, 0, 5, "n"));
  EXPECT_EQ(InvalidArgumentMessage([] { limits::CheckRange(-1, 0, 5, "count"); }),
            "count = -1: expected 0 to 5");
  EXPECT_EQ(InvalidArgumentMessage([] { limits::CheckRange(6, 0, 5, "side", " px"); }),
            "side = 6: expected 0 to 5 px");
}

TEST(RenderLimits, ImageSideVolumeAndBatchAreChecked) {
  EXPECT_NO_THROW(ValidateParallelCamera(ParallelCamera{1.0, 16384, 1}));
  const std::string msg =
      InvalidArgumentMessage([] { ValidateParallelCamera(ParallelCamera{1.0, 1 << 30, 1 << 30}); });
  EXPECT_NE(msg.find("1073741824"), std::string::npos) << msg;
  EXPECT_NE(msg.find("16384"), std::string::npos) << msg;
  EXPECT_THROW(ValidateParallelCamera(ParallelCamera{1.0, 16385, 8}), std::invalid_argument);
  EXPECT_THROW(ValidateParallelCamera(ParallelCamera{1.0, -8, 8}), std::invalid_argument);

  // A volume whose voxel count is beyond the limit (never dereferenced: validation comes
  // first), and one whose int sides would wrap a 32-bit product.
  const float dummy = 0.f;
  VolumeGrid big;
  big.data = &dummy;
  big.nx = big.ny = 16384;
  big.nz = 8;
  EXPECT_NE(InvalidArgumentMessage([&] { ValidateVolume(big); }).find("voxels"),
            std::string::npos);
  big.nz = 16385;
  EXPECT_THROW(ValidateVolume(big), std::invalid_argument);
  EXPECT_THROW(RenderVolume(big, Device::kCpu), std::invalid_argument);

  std::vector<double> pose(6, 0.0);
  EXPECT_THROW(ValidatePoses(pose.data(), -1), std::invalid_argument);
  EXPECT_THROW(ValidatePoses(pose.data(), static_cast<int>(limits::kMaxBatch) + 1),
               std::invalid_argument);
}

}  // namespace
}  // namespace fluororeg
