// Screening of the mirror cases: a few cheap Levenberg-Marquardt iterations on the same cost
// (residual blocks and loss) that Ceres solves, without Ceres' per-solve set-up. Only used to
// tell the contending mirror cases from the far worse ones; the pose of a frame always comes
// from a full Ceres solve (frame_solver.cc). Not installed.
#pragma once

#include <memory>
#include <vector>

#include "residual.h"

namespace fluororeg {
namespace internal {

// Minimises 1/2 sum_b rho(|r_b(x)|^2) over x [6] (in and out) for at most `iterations` LM
// steps (accepted or not), blocks[0 .. num_blocks) the residual blocks and `loss` their loss
// (nullptr: rho(s) = s). Robust losses enter as iteratively reweighted least squares (weight
// rho'(s) per block). Returns the number of steps taken, or -1 when the cost cannot be
// evaluated at the start (a landmark behind a source; x is then unchanged). Stops early, like
// Ceres, when an accepted step lowers the cost by at most function_tolerance (relative) or a
// step is at most parameter_tolerance (relative to |x|).
int ScreenSolve(const std::vector<std::unique_ptr<ViewResidual>>& blocks, int num_blocks,
                const ceres::LossFunction* loss, int iterations, double function_tolerance,
                double parameter_tolerance, double* x);

}  // namespace internal
}  // namespace fluororeg
