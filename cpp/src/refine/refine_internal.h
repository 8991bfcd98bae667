// The refinement's batch driver for many frames at once (see refine.cc), exposed for the tests.
#pragma once

#include "fluororeg/refine.h"

namespace fluororeg {
namespace internal {

// Groups the frames in flight are split into, each gathering its own renders, so that one
// group's host work overlaps another's renders. Chosen, not measured.
constexpr int kGatherGroups = 2;

// RefineFrames with `frames_in_flight` frames refined at once, one worker thread each, in
// kGatherGroups groups whose region renders are gathered into one RenderConePixelsBatch call per
// volume and round (on the options' device). Gives the same results as RefineFrames.
void RefineFramesGathered(const RefineInput& input, const double* init_poses, int num_frames,
                          RefineResult* results, const RefineOptions& options,
                          int frames_in_flight);

}  // namespace internal
}  // namespace fluororeg
