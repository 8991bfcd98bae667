// The solver of one frame: the four mirror cases of Table 1, each solved by the screening LM
// or by Ceres (frame_solver.cc says when; not installed; batch.cc drives it).
#pragma once

#include "fluororeg/geometry.h"
#include "fluororeg/registration.h"

namespace fluororeg {
namespace internal {

// Registers one frame whose input was validated. projectors [2]: ConeProjector of each view
// of setup. detections [2, N, 2] px; weights [2, N] or nullptr (all 1); init_pose [6] rad, mm
// or nullptr (the paper's start). Thread-safe (per-thread scratch space).
RegistrationResult SolveFrame(const RegistrationSetup& setup, const ConeProjector projectors[2],
                              const double* detections, const double* weights,
                              const double* init_pose, const RegistrationOptions& options);

}  // namespace internal
}  // namespace fluororeg
