"""Matryoshka Diffusion (Gu et al. 2310.15111, Sec. 3; DESIGN.md 5.7; reference apple/ml-mdm):
one NestedUNet denoises R resolutions of the same image jointly.

Resolutions res_1 < ... < res_R (config `mdm.resolutions`, written highest first like ml-mdm's
`multi_res_weights`; every tuple in the code runs lowest first). x_r = avgpool(x, H / res_r);
all resolutions share t ~ U(0, 1) and draw independent noise eps_r (ml-mdm pools the noise, then
redraws it: `eps[i].normal_()`), and resolution r uses the shifted cosine schedule:

  z_r = alpha_r(t) x_r + sigma_r(t) eps_r,   lambda_r(t) = lambda(t) - p log(res_r / res_1),

the paper's forward process q(z_t^r | x) = N(alpha_t^r D^r(x), (sigma_t^r)^2 I) (Sec. 3.1) with
ml-mdm's shift snr / (res_r / res_1)^p (`schedule_shifted_power` p = `mdm.shift_power`). The loss
is the paper's multi-resolution denoising loss (Sec. 3.1, L = E sum_r w_r ||eps_theta^r - eps^r||^2)
with the teacher's weightings (`diffusion.weighting`, diffusion.losses):

  loss = sum_r w_r weight(lambda_r(t)) mean_pixels ||x_r - x_hat_r(z_1, ..., z_R, t)||^2,

where weight = `snr` is exactly the paper's and ml-mdm's per-pixel eps-MSE (`loss_target_type:
DDPM` of a v-predicting network, no VDM weights, `multi_res_weights`; the presets' default) and
`snr+1` the teacher's v-MSE. The network's time input is the unshifted lambda(t) for every
level (diffusion.denoiser.make_denoiser), as ml-mdm feeds every level the same step index.

Progressive growth (Sec. 3.3): with `mdm.inner_workdir` the run starts from a trained model over
the lower resolutions (a 1-resolution run of the inner UNet, or a nested run), embedded as the
NestedUNet's `inner` with a fresh outer shell; nothing is frozen and every resolution's loss
is kept. Sampling denoises all resolutions together from independent noise, each leaf with its
own process (sampling over nested z) and returns the highest resolution.
"""
import jax
import jax.numpy as jnp

from diffusion.denoiser import make_denoiser, model_apply_fn
from diffusion.losses import get_weighting, weighted_x_mse
from diffusion.nested_unet import nested_resolutions
from diffusion.networks import build_network, init_params
from diffusion.processes import shifted_cosine
from distillation.common import require_sections, training_cond
from distillation.teacher import FromData
from infra.params import check_same_structure
from sampling.noise import normal_like
from training.method import register
from training.samples import sample_images


def avg_pool(x, resolution: int):
  """Average pooling of (B, H, W, C) images down to (B, resolution, resolution, C)."""
  b, h, w, c = x.shape
  f = h // resolution
  return x.reshape(b, resolution, f, resolution, f, c).mean(axis=(2, 4))


def pyramid(x, resolutions) -> tuple:
  """(x_1, ..., x_R): x average-pooled to every resolution, lowest first."""
  return tuple(avg_pool(x, r) for r in resolutions)


def shifted_processes(resolutions, shift_power: float, **kwargs) -> tuple:
  """One cosine process per resolution (lowest first): lambda_r = lambda - p log(res_r / res_1)."""
  return tuple(shifted_cosine(r, resolutions[0], shift_power, **kwargs) for r in resolutions)


def multiresolution_losses(denoise, params, xs, t, eps, processes, weighting, cond=None,
                           rng=None):
  """Per-resolution weighted x-MSE (diffusion.losses.weighted_x_mse), a pytree like xs of (B,):

  w(lambda_r(t)) mean_pixels ||x_r - x_hat_r(z, t)||^2,  z_r = alpha_r(t) x_r + sigma_r(t) eps_r;

  `snr` is the paper's eps-MSE mean ||eps_r - eps_hat_r||^2 (= snr_r x the x-MSE), `snr+1`
  the teacher's v-MSE. xs, eps: pytrees (one leaf per resolution) or single arrays;
  processes: the matching pytree of processes (or one process); `rng` turns on dropout.
  """
  z = jax.tree.map(lambda p, x, e: p.noise(x, t, e), processes, xs, eps)
  pred = denoise(params, z, t, cond, rng=rng)
  return jax.tree.map(lambda p, x, x_hat: weighted_x_mse(x, x_hat, p.logsnr(t), weighting),
                      processes, xs, pred.x)


def check_resolutions(mdm, image_size: int) -> tuple:
  """`mdm.resolutions` lowest first, with a clear error unless they strictly decrease, divide
  the data's image size and come with one loss weight each."""
  resolutions = tuple(int(r) for r in mdm.resolutions)
  if not resolutions or list(resolutions) != sorted(set(resolutions), reverse=True):
    raise ValueError(f"mdm.resolutions={resolutions} must list distinct resolutions, highest "
                     "first, e.g. (28, 14).")
  bad = [r for r in resolutions if image_size % r]
  if bad:
    raise ValueError(f"mdm.resolutions {bad} do not divide the {image_size}x{image_size} data: "
                     "each resolution is the data average-pooled by an integer factor.")
  if len(mdm.loss_weights) != len(resolutions):
    raise ValueError(f"mdm.loss_weights={tuple(mdm.loss_weights)} needs one weight per "
                     f"resolution of mdm.resolutions={resolutions} (same order, highest first).")
  return resolutions[::-1]


@register("matryoshka")
class MatryoshkaDiffusion(FromData):
  """Trains a NestedUNet (or, for one resolution, a plain network) on the multi-resolution
  loss; one stage of num_train_steps updates; grows around `mdm.inner_workdir` when set."""
  teacher_workdir_key = "mdm.inner_workdir"
  usage = "--config=configs/matryoshka.py:<preset>"

  def __init__(self, config):
    super().__init__(config)
    require_sections(config, ("mdm",), self.usage)
    if config.diffusion.process != "cosine":
      raise ValueError(f"Matryoshka shifts the cosine schedule per resolution; "
                       f"diffusion.process={config.diffusion.process!r} is not supported: "
                       "set --config.diffusion.process=cosine.")
    height, _, channels = config.data.shape
    self.resolutions = check_resolutions(config.mdm, height)
    self.weights = tuple(float(w) for w in config.mdm.loss_weights)[::-1]
    self.shapes = tuple((r, r, channels) for r in self.resolutions)
    self.network = build_network(config.model)
    takes = nested_resolutions(self.network, self.resolutions[-1])
    if takes != self.resolutions:
      raise ValueError(f"model {config.model.name!r} takes the resolutions {takes[::-1]} (highest "
                       f"first) but mdm.resolutions={self.resolutions[::-1]}: nest one UNet per "
                       "resolution (one halving per extra outer ch_mult level).")
    self.processes = shifted_processes(self.resolutions, config.mdm.shift_power,
                                       logsnr_min=config.diffusion.logsnr_min,
                                       logsnr_max=config.diffusion.logsnr_max)
    get_weighting(config.diffusion.weighting)     # an unknown name fails here, listing them
    apply_fn = model_apply_fn(self.network)
    if len(self.resolutions) == 1:   # a plain network takes and returns one array
      plain = apply_fn
      apply_fn = lambda params, z, *args: (plain(params, z[0], *args),)
    self.denoise = make_denoiser(apply_fn, self.processes, config.diffusion.parameterization)

  @property
  def needs_teacher(self):
    """Progressive growth: the trainer loads `mdm.inner_workdir`'s EMA parameters for `init`."""
    return bool(self.config.mdm.inner_workdir)

  def init(self, rng, teacher_params=None):
    shapes = self.shapes if len(self.shapes) > 1 else self.shapes[0]
    params = init_params(self.network, rng, shapes)
    if teacher_params is None:
      return params
    if len(self.resolutions) == 1:
      raise ValueError("mdm.inner_workdir grows a NestedUNet around a trained model: this run "
                       "has one resolution; give it a nested model and one more resolution.")
    check_same_structure(params["inner"], teacher_params,
                         f"The inner model in mdm.inner_workdir={self.config.mdm.inner_workdir}")
    return dict(params, inner=teacher_params)

  def teacher_shapes(self):
    """Growth's teacher is the inner model: the shapes of this network's `inner` part."""
    return jax.eval_shape(lambda: self.init(jax.random.PRNGKey(0)))["inner"]

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    """sum_r w_r loss_r (multiresolution_losses) with one t, independent eps_r = normal_like(eps key, pyramid)."""
    xs = pyramid(batch["image"], self.resolutions)
    t_rng, eps_rng, drop_rng, cond_rng = jax.random.split(rng, 4)
    t = jax.random.uniform(t_rng, xs[0].shape[:1])
    cond = training_cond(self.config, batch, cond_rng)
    losses = multiresolution_losses(self.denoise, params, xs, t, normal_like(eps_rng, xs),
                                    self.processes, self.config.diffusion.weighting, cond,
                                    drop_rng)
    means = [jnp.mean(l) for l in losses]
    total = sum(w * m for w, m in zip(self.weights, means))
    metrics = {f"loss_{r}px": m for r, m in zip(self.resolutions, means)}
    return total, dict(metrics, loss=total)

  def sample_resolutions(self, params, rng, num_samples, stage) -> tuple:
    """Samples at every resolution, lowest first; the highest is drawn from the same z_1 as
    training.samples.sample_images draws for a plain model, the lower ones from fresh
    noise (sampling.noise.normal_like)."""
    return sample_images(self.config, self.denoise, self.processes, params, rng, num_samples,
                         stage["num_steps"], shapes=self.shapes)

  def sample(self, params, rng, num_samples, stage):
    return self.sample_resolutions(params, rng, num_samples, stage)[-1]
