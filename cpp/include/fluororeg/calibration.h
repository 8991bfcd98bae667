// Calibration of one fluoroscope view from beads with known 3D positions (Ceres).
//
// A view is the ConeView of geometry.h: point source S, intensifier plane with centre D and
// orthonormal axes u (image +x), v (image +y), fixed pixel pitches and image size. Refinement
// moves S (3), D (3) and the orientation of the frame (u, v, n = u x v) by a rotation (3):
// 9 degrees of freedom, the same as a zero-skew pinhole K [R | t] whose focal lengths keep
// the ratio fx / fy = pitch_v / pitch_u. Any block can be held fixed: holding D and the
// orientation fixed estimates the source position alone (the paper's four-bead source
// alignment with a known intensifier plane).
//
// Residuals are reprojection errors in pixels (x = column, y = row, origin at the centre of
// the top-left pixel). Units: millimetres.
#pragma once

#include <string>
#include <vector>

#include "fluororeg/geometry.h"

namespace fluororeg {

struct ViewRefineOptions {
  bool refine_source = true;
  bool refine_intensifier_centre = true;
  bool refine_orientation = true;
  int max_iterations = 200;
  // Huber loss scale in pixels; <= 0 for plain least squares.
  double huber_px = 0.0;
};

struct ViewRefineResult {
  ConeView view;
  double initial_rms_px = 0;  // RMS reprojection error before refinement
  double final_rms_px = 0;    // and after
  std::vector<double> residuals_px;  // [2 n]: (x, y) reprojection error per bead, after
  int iterations = 0;
  bool converged = false;
  std::string message;  // Ceres' termination message
};

// points_world [n, 3] mm and pixels [n, 2] (row-major). Throws std::invalid_argument for
// n < 2, non-finite input, a bead behind the source or too few observations for the number
// of free parameters.
ViewRefineResult RefineConeView(const ConeView& initial, const double* points_world,
                                const double* pixels, int n, const ViewRefineOptions& options);

// Reprojection residuals (projected - observed) in pixels [2 n] of a fixed view; NaN where a
// bead lies behind the source.
std::vector<double> ReprojectionResiduals(const ConeView& view, const double* points_world,
                                          const double* pixels, int n);

}  // namespace fluororeg
