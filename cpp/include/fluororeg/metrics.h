// Registration error metrics: the paper's Eq. 3 and the mean landmark distance.
// Poses are (theta_x, theta_y, theta_z rad, tau_x, tau_y, tau_z mm), extrinsic z-y-x Euler
// angles (DESIGN.md).
#pragma once

namespace fluororeg {

// Eq. 3: eps_theta = ||theta_a - theta_b||_inf (rad; each angle difference wrapped to
// [-pi, pi) first), eps_tau = ||tau_a - tau_b||_inf (mm).
//   pose_a, pose_b [6] rad, mm
void PoseErrors(const double* pose_a, const double* pose_b, double* eps_theta_rad,
                double* eps_tau_mm);

// Mean over landmarks of |(R_a X + tau_a) - (R_b X + tau_b)| (mm).
//   landmarks [n, 3] mm (model frame), n >= 1;  pose_a, pose_b [6] rad, mm
double MeanLandmarkDistance(const double* landmarks, int n, const double* pose_a,
                            const double* pose_b);

// Angle wrapped to [-pi, pi).
double WrapAngle(double a);

}  // namespace fluororeg
