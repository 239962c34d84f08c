"""Teacher-student fidelity: how close a student's k-step samples are to the teacher's
many-step samples drawn from the same noise. Images in [-1, 1] (peak-to-peak 2).

MSE = mean (student - teacher)^2,  PSNR = 10 log10(2^2 / MSE) = 10 log10(4 / MSE) dB.
"""
import jax.numpy as jnp

PEAK_TO_PEAK = 2.0


def mse_per_example(student, teacher):
  """mean over all but the batch axis of (student - teacher)^2, shape (B,)."""
  err = jnp.square(jnp.asarray(student, jnp.float32) - jnp.asarray(teacher, jnp.float32))
  return jnp.mean(err.reshape(err.shape[0], -1), axis=1)


def psnr(mse, peak_to_peak: float = PEAK_TO_PEAK):
  """10 log10(peak_to_peak^2 / MSE); +inf where MSE = 0."""
  return 10.0 * jnp.log10(peak_to_peak ** 2 / mse)


def fidelity(student, teacher) -> dict:
  """{'mse': mean MSE, 'psnr': PSNR of the mean MSE, 'psnr_mean': mean per-example PSNR}."""
  per_example = mse_per_example(student, teacher)
  mse = jnp.mean(per_example)
  return {"mse": mse, "psnr": psnr(mse), "psnr_mean": jnp.mean(psnr(per_example))}
