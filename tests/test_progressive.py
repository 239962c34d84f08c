"""Progressive distillation and the distilled DDIM encoder: the x_tilde / eps_tilde targets
land exactly on the teacher's two steps, the loss is finite at every N, one short stage
makes an MLP student follow its 2N-step teacher, and the presets' schedules add up."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import guided as guided_configs
from configs import progressive as progressive_configs
from configs import teacher as teacher_configs
from diffusion.analytic import analytic_denoiser
from diffusion.networks import build_denoiser
from diffusion.parameterization import Prediction
from diffusion.processes import broadcast_to, get_process
from distillation.encoder import (EncoderDistillation, encode, encoder_loss,
                                  with_data_first_step)
from distillation.progressive import (ProgressiveDistillation, halving_steps, halving_target,
                                      progressive_loss, two_teacher_steps)
from distillation.teacher import TeacherTraining
from sampling import get_sampler
from sampling.steps import ddim_step, scales
from tests.distill_fixtures import MIXTURE, gmm_batch, gmm_config, random_params, randomize
from training.method import get_method
from training.samples import ddim_samples, sample_labels

STEP_COUNTS = (1, 2, 8, 64)


@functools.cache
def teacher_denoiser(kind, process_name):
  """(denoise, params, process): the exact mixture denoiser or a random MLP."""
  process = get_process(process_name)
  if kind == "analytic":
    return analytic_denoiser(MIXTURE, process), None, process
  config = gmm_config(parameterization="velocity" if process.is_flow else "v")
  config.diffusion.process = process_name
  network, process, denoise = build_denoiser(config)
  params = random_params(network, (2,), jax.random.key(1))
  return denoise, params, process


def student_step(target, z, t, s, process, learn):
  """One DDIM step t -> s whose prediction is `target.x` (learn='x') or `target.eps`
  (learn='eps'), completed consistently with z_t as the network's parameterization would."""
  alpha_t, sigma_t = process.alpha_sigma(broadcast_to(t, z))
  if learn == "x":
    pred = Prediction(x=target.x, eps=(z - alpha_t * target.x) / sigma_t)
  else:
    pred = Prediction(x=(z - sigma_t * target.eps) / alpha_t, eps=target.eps)
  return ddim_step(pred, *scales(process, broadcast_to(s, z)))


def targets_and_landings(denoise, params, process, x_or_z, t, s, teacher=None):
  """Jitted (teacher's two-step landing, halving target) for per-example t, s."""
  teacher = teacher or denoise
  fn = lambda z, t, s: (two_teacher_steps(teacher, params, z, t, s, None, process),
                        halving_target(teacher, params, z, t, s, None, process))
  return jax.jit(fn)(x_or_z, t, s)


@pytest.mark.parametrize("kind", ["analytic", "mlp"])
@pytest.mark.parametrize("process_name", ["cosine", "flow"])
def test_student_step_with_x_tilde_lands_on_two_teacher_steps(kind, process_name):
  """For every step of N = 1, 2, 8, 64, the last one (t'' = 0) included."""
  denoise, params, process = teacher_denoiser(kind, process_name)
  n = np.concatenate([np.full(k, k) for k in STEP_COUNTS])
  i = np.concatenate([np.arange(1, k + 1) for k in STEP_COUNTS])
  t, s = jnp.asarray(i / n, jnp.float32), jnp.asarray((i - 1) / n, jnp.float32)
  z = jax.random.normal(jax.random.key(0), (len(n), 2)) * 1.5
  landing, target = targets_and_landings(denoise, params, process, z, t, s)
  np.testing.assert_allclose(student_step(target, z, t, s, process, "x"), landing,
                             rtol=2e-4, atol=2e-5)
  # At t'' = 0 the target is the teacher's x_hat at t' = 0.5 / N itself.
  last = np.flatnonzero(i == 1)
  m = jnp.asarray(0.5 / n[last], jnp.float32)
  z_m = ddim_step(denoise(params, z[last], t[last], None),
                  *scales(process, broadcast_to(m, z[last])))
  np.testing.assert_allclose(target.x[last], denoise(params, z_m, m, None).x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["analytic", "mlp"])
@pytest.mark.parametrize("use_data", [True, False])
def test_student_encoder_step_lands_on_two_teacher_encoder_steps(kind, use_data):
  """For every step of N = 1, 2, 8, 64, the first one (t = 0) included."""
  denoise, params, process = teacher_denoiser(kind, "cosine")
  teacher = with_data_first_step(denoise, jnp.asarray(use_data))
  n = np.concatenate([np.full(k, k) for k in STEP_COUNTS])
  i = np.concatenate([np.arange(k) for k in STEP_COUNTS])
  t, s = jnp.asarray(i / n, jnp.float32), jnp.asarray((i + 1) / n, jnp.float32)
  x = MIXTURE.sample(jax.random.key(0), len(n))[0]
  z = process.noise(x, t, jax.random.normal(jax.random.key(1), x.shape))
  landing, target = targets_and_landings(denoise, params, process, z, t, s, teacher)
  np.testing.assert_allclose(student_step(target, z, t, s, process, "eps"), landing,
                             rtol=2e-4, atol=2e-5)


def test_first_encoder_teacher_is_sampling_ddim_encode():
  """Chained two-step teacher encodings of stage 0 = sampling's 2N-step `ddim_encode`."""
  denoise, params, process = teacher_denoiser("mlp", "cosine")
  teacher = with_data_first_step(denoise, jnp.asarray(True))
  n = 4
  x = MIXTURE.sample(jax.random.key(0), 32)[0]
  z = x
  for i in range(n):
    z = two_teacher_steps(teacher, params, z, jnp.full((32,), i / n), jnp.full((32,), (i + 1) / n),
                          None, process)
  reference = get_sampler("ddim_encode")(denoise, params, x, process=process, num_steps=2 * n)
  np.testing.assert_allclose(z, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("parameterization", ["v", "eps", "x"])
@pytest.mark.parametrize("loss_fn", [progressive_loss, encoder_loss])
def test_loss_and_gradients_are_finite_at_every_n(parameterization, loss_fn):
  config = gmm_config(parameterization=parameterization)
  network, process, denoise = build_denoiser(config)
  teacher = random_params(network, (2,), jax.random.key(1))
  student = randomize(teacher, jax.random.key(2))
  x = gmm_batch(jax.random.key(3), 256)["image"]
  fn = jax.jit(jax.value_and_grad(
      lambda p, n: jnp.mean(loss_fn(denoise, p, teacher, x, None, jax.random.key(4), n, process,
                                    "truncated_snr"))))
  for n in STEP_COUNTS:
    value, grads = fn(student, n)
    assert np.isfinite(float(value)) and value > 0
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def _adam_loop(loss, params, frozen, batches, stage, lr, steps):
  tx = optax.adam(lr)

  @jax.jit
  def step(params, opt_state, k):
    grads = jax.grad(lambda p: loss(p, frozen, batches(k), jax.random.fold_in(jax.random.key(7), k),
                                    stage)[0])(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for k in range(steps):
    params, opt_state = step(params, opt_state, k)
  return params


def test_one_stage_brings_the_student_closer_to_the_2n_step_teacher():
  """Student N-step samples vs teacher 2N-step ones beat the teacher's own N-step samples."""
  config = gmm_config(teacher_steps=4)
  batches = lambda k: gmm_batch(jax.random.fold_in(jax.random.key(5), k), 256)
  teacher_method = TeacherTraining(config)
  teacher = _adam_loop(teacher_method.loss, teacher_method.init(jax.random.key(0)), {}, batches,
                       {}, 3e-3, 400)
  method = ProgressiveDistillation(config)
  n = 2
  student = _adam_loop(method.loss, method.init(jax.random.key(1), teacher), teacher, batches,
                       {"num_steps": jnp.asarray(n)}, 1e-3, 300)
  ddim = jax.jit(lambda p, z, k: get_sampler("ddim")(method.denoise, p, z, process=method.process,
                                                     num_steps=k), static_argnums=2)
  z = jax.random.normal(jax.random.key(9), (2048, 2))
  reference = ddim(teacher, z, 2 * n)
  student_error = float(jnp.mean((ddim(student, z, n) - reference) ** 2))
  teacher_error = float(jnp.mean((ddim(teacher, z, n) - reference) ** 2))
  assert student_error < 0.02 * teacher_error, (student_error, teacher_error)


def test_stage_metrics_compare_n_and_2n_step_samples():
  config = gmm_config()
  method = ProgressiveDistillation(config)
  teacher = random_params(method.network, (2,), jax.random.key(1))
  stage = {"num_steps": jnp.asarray(2)}
  metrics = jax.jit(method.stage_metrics)(teacher, teacher, jax.random.key(2), stage)
  images = lambda k: ddim_samples(config, method.denoise, method.process, teacher,
                                  jax.random.key(2), 16, k)
  mse = float(jnp.mean((images(2) - images(4)) ** 2))
  np.testing.assert_allclose(metrics["fidelity_mse"], mse, rtol=1e-5)
  np.testing.assert_allclose(metrics["fidelity_psnr"], 10 * np.log10(4 / mse), rtol=1e-5)


def test_encoder_method_stages_and_sampler():
  config = gmm_config(method="progressive_encoder")
  method = get_method(config)
  assert isinstance(method, EncoderDistillation)
  stages = method.stages()
  assert [s.args for s in stages] == [{"num_steps": 4, "data_first_step": 1},
                                      {"num_steps": 2, "data_first_step": 0},
                                      {"num_steps": 1, "data_first_step": 0}]
  teacher = random_params(method.network, (2,), jax.random.key(1))
  frozen = method.init_frozen(teacher)
  assert method.next_frozen(frozen, "student")["teacher"] == "student"
  x = MIXTURE.sample(jax.random.key(2), 8)[0]
  # With N = 1, `encode` is one DDIM step from t = 0 with the network's prediction there.
  pred = method.denoise(teacher, x, 0.0, None)
  one_step = encode(method.denoise, teacher, x, process=method.process, num_steps=1)
  np.testing.assert_allclose(one_step, ddim_step(pred, *scales(method.process, 1.0)), rtol=1e-5)
  for stage in stages:
    metrics = jax.jit(method.stage_metrics)(teacher, frozen, jax.random.key(3), stage.jax_args())
    assert np.isfinite(float(metrics["fidelity_mse"]))


def test_class_conditional_encoder_metrics_use_the_sampled_labels():
  """Stage 0 fidelity = student N-step `encode` vs 2N-step `ddim_encode` codes of the decoder's
  DDIM samples, both given the labels those samples were drawn with."""
  config = gmm_config(method="progressive_encoder", num_classes=3)
  method = get_method(config)
  teacher = random_params(method.network, (2,), jax.random.key(1))
  student = randomize(teacher, jax.random.key(2))
  stage = method.stages()[0].jax_args()
  metrics = jax.jit(method.stage_metrics)(student, method.init_frozen(teacher),
                                          jax.random.key(3), stage)
  n, num_steps = config.distill.fidelity_samples, int(stage["num_steps"])
  images = ddim_samples(config, method.denoise, method.process, teacher, jax.random.key(3), n,
                        config.distill.teacher_steps)
  cond = {"label": sample_labels(config.sample, n, 3)}
  codes = encode(method.denoise, student, images, cond, process=method.process,
                 num_steps=num_steps)
  teacher_codes = get_sampler("ddim_encode")(method.denoise, teacher, images, cond,
                                             process=method.process, num_steps=2 * num_steps)
  np.testing.assert_allclose(metrics["fidelity_mse"], jnp.mean((codes - teacher_codes) ** 2),
                             rtol=1e-4)


@pytest.mark.parametrize("method_name", ["progressive", "progressive_encoder"])
def test_methods_need_the_distill_section_and_the_uniform_grid(method_name):
  config = gmm_config(method=method_name)
  config.sample.time_grid = "quadratic"
  with pytest.raises(ValueError, match="trains on the uniform grid t = i/N; set "
                                       "--config.sample.time_grid=uniform"):
    get_method(config)
  del config.distill
  with pytest.raises(ValueError, match=f"method '{method_name}' needs the `distill` config "
                                       "section: use --config=configs/progressive.py:<preset>"):
    get_method(config)


def test_sample_images_rejects_the_encoder():
  config = gmm_config()
  config.sample.sampler = "ddim_encode"
  method = get_method(config)
  with pytest.raises(ValueError, match="'ddim_encode' maps data to noise; it cannot draw"):
    method.sample(None, jax.random.key(0), 4, {"num_steps": 2})


def test_halving_schedule():
  assert halving_steps(64, 1) == [32, 16, 8, 4, 2, 1]
  assert halving_steps(1024, 4) == [512, 256, 128, 64, 32, 16, 8, 4]
  for bad in [(48, 1), (64, 3), (8, 8)]:
    with pytest.raises(ValueError, match="power of two"):
      halving_steps(*bad)


@pytest.mark.parametrize("preset", ["digits", "fashion_mnist", "fashion_mnist_cpu", "cifar10",
                                    "imagenet64"])
def test_presets_follow_their_teacher_and_add_up(preset):
  for module, method_name in ((progressive_configs, "progressive"), (guided_configs, "guided")):
    cond_preset = preset
    if method_name == "guided" and f"{preset}_cond" in teacher_configs.PRESETS:
      cond_preset = f"{preset}_cond"
    teacher = teacher_configs.get_config(cond_preset)
    config = module.get_config(preset)
    assert config.method == method_name
    expected_model = dict(teacher.model, dropout=0.0)
    if method_name == "guided":
      expected_model.update(guidance=True, num_classes=config.data.num_classes)
    assert dict(config.model) == expected_model
    stages = get_method(config).stages()
    assert config.num_train_steps == 0          # the trainer runs the whole schedule
    assert stages[-1].args["num_steps"] == 1
    assert config.optim.ema_decay == 0.0 and config.optim.schedule == "linear"
    assert config.optim.warmup_steps == 0 and config.optim.grad_clip == 1.0
