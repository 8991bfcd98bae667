// The refinement's batch driver for many frames at once (see refine.cc), exposed for the tests.
#pragma once

#include <vector>

#include "fluororeg/refine.h"

namespace fluororeg {
namespace internal {

// RefineFrames with `frames_in_flight` frames refined at once, one worker thread each, their
// region renders gathered into RenderConePixelsBatch calls by a render thread (on the options'
// device) while the workers do their host work. Gives the same results as RefineFrames.
void RefineFramesGathered(const RefineInput& input, const double* init_poses, int num_frames,
                          RefineResult* results, const RefineOptions& options,
                          int frames_in_flight);

// The refinement's linearisation of frame 0 at one pyramid level (for the tests): over the
// region of interest of `pose` [6] (rad, mm), the residuals at each of `poses` [K, 6]
// ([K, n_res]), and at `pose` the normal equations of the analytic Jacobian (A [6, 6] row-major,
// g [6], cost = r . r) along the refinement's scaled parameters: a rotation w (rad, world axes,
// about the model origin) times lever_mm, then a translation (mm).
struct LevelLinearisation {
  std::vector<double> residuals;
  double A[36] = {}, g[6] = {}, cost = 0, lever_mm = 0;
};
LevelLinearisation LineariseLevel(const RefineInput& input, const RefineOptions& options,
                                  int level, const double* pose, const double* poses, int num_poses);

}  // namespace internal
}  // namespace fluororeg
