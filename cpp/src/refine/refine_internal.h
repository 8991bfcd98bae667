// The refinement's batch driver for many frames at once (see refine.cc), exposed for the tests.
#pragma once

#include "fluororeg/refine.h"

namespace fluororeg {
namespace internal {

// Frames refined together on the CUDA device (RefineFrames with device kCuda): the renders of
// all of them are gathered into one call per round. A chosen value, not a measured optimum.
constexpr int kCudaFramesInFlight = 128;

// RefineFrames with `frames_in_flight` frames refined at once, one worker thread each, their
// region renders gathered into one RenderConePixelsBatch call per volume and round (on the
// options' device). Gives the same results as RefineFrames.
void RefineFramesGathered(const RefineInput& input, const double* init_poses, int num_frames,
                          RefineResult* results, const RefineOptions& options,
                          int frames_in_flight);

}  // namespace internal
}  // namespace fluororeg
