"""Distillation targets: the prediction that makes ONE DDIM step land on a given point.

A DDIM step from t to s with prediction (x, eps) consistent with z_t solves

  z_t = alpha_t x + sigma_t eps,   z_s = alpha_s x + sigma_s eps,

a 2x2 linear system in (x, eps). By Cramer's rule, with d = alpha_t sigma_s - sigma_t alpha_s:

  x_tilde   = (sigma_s z_t - sigma_t z_s) / d
            = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t),
  eps_tilde = (alpha_t z_s - alpha_s z_t) / d
            = (z_s - (alpha_s / alpha_t) z_t) / (sigma_s - (alpha_s / alpha_t) sigma_t).

The two are the same formula with alpha and sigma (x and eps) swapped, and hold for
s < t (sampling, progressive distillation) and s > t (the DDIM encoder) alike. d = 0 only
when lambda_s = lambda_t. At the data end, (alpha, sigma) = (1, 0) exactly: for s = 0,
x_tilde = z_s (the teacher's last x_hat itself); for t = 0, eps_tilde = (z_s - alpha_s z_t) /
sigma_s. Nothing divides by sigma_t or alpha_t, so neither end point gives 0/0.
"""
from diffusion.parameterization import Prediction


def ddim_target(z_t, z_s, alpha_t, sigma_t, alpha_s, sigma_s) -> Prediction:
  """(x_tilde, eps_tilde): the prediction whose DDIM step t -> s maps z_t exactly to z_s."""
  d = alpha_t * sigma_s - sigma_t * alpha_s
  return Prediction(x=(sigma_s * z_t - sigma_t * z_s) / d,
                    eps=(alpha_t * z_s - alpha_s * z_t) / d)
