// The refinement's batch driver for many frames at once (see refine.cc), exposed for the tests.
#pragma once

#include "fluororeg/refine.h"

namespace fluororeg {
namespace internal {

// RefineFrames with `frames_in_flight` frames refined at once, one worker thread each, their
// region renders gathered into RenderConePixelsBatch calls by a render thread (on the options'
// device) while the workers do their host work. Gives the same results as RefineFrames.
void RefineFramesGathered(const RefineInput& input, const double* init_poses, int num_frames,
                          RefineResult* results, const RefineOptions& options,
                          int frames_in_flight);

}  // namespace internal
}  // namespace fluororeg
