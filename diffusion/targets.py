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


def signal_step_size(alpha_t, sigma_t, alpha_s, sigma_s):
  """BOOT's delta = 1 - (alpha_t sigma_s) / (sigma_t alpha_s) of a step t -> s (Gu et al. 2023);
  exactly 1 at s = 0, where (alpha_s, sigma_s) = (1, 0) (sampling.steps.scales)."""
  return 1.0 - (alpha_t * sigma_s) / (sigma_t * alpha_s)


def signal_target(y_t, x_teacher, delta):
  """One DDIM step t -> s in signal space: y_s = y_t + delta (x_teacher - y_t).

  With z_t = alpha_t y_t + sigma_t eps and the teacher's x_teacher = f(z_t, t),
  alpha_s y_s + sigma_s eps is exactly the DDIM step alpha_s x_teacher + sigma_s eps_teacher,
  eps_teacher = (z_t - alpha_t x_teacher) / sigma_t.
  """
  return y_t + delta * (x_teacher - y_t)
