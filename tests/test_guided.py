"""Guided distillation: the stage-1 student starts as the conditional teacher, the stage-1
target is the classifier-free-guided teacher, stage 2 passes w to teacher and student, the
one-run 'guided' method switches losses by phase, and losses are finite at every N."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.networks import build_denoiser
from distillation.guided import GuidedDistillation, GuidedStage1, guided_w_loss
from distillation.progressive import ProgressiveDistillation, progressive_loss
from sampling import guided
from tests.distill_fixtures import gmm_batch, gmm_config, random_params, randomize
from training.method import get_method

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def setup():
  """(method 'guided', teacher params, teacher denoise, stage-1 student at init, batch)."""
  method = get_method(gmm_config("guided", NUM_CLASSES, guidance=True))
  assert isinstance(method, GuidedDistillation)
  config = gmm_config("teacher", NUM_CLASSES)
  network, _, teacher_denoise = build_denoiser(config)
  teacher = random_params(network, (2,), jax.random.key(1))
  student = method.init(jax.random.key(2), teacher)
  return method, teacher, teacher_denoise, student, gmm_batch(jax.random.key(3), 128)


def _inputs(batch, w):
  z = jax.random.normal(jax.random.key(4), batch["image"].shape)
  t = jax.random.uniform(jax.random.key(5), z.shape[:1])
  return z, t, {"label": batch["label"], "w": jnp.full(z.shape[:1], w)}


@pytest.mark.parametrize("w", [0.0, 2.5])
def test_stage1_student_and_frozen_teacher_start_as_the_conditional_teacher(setup, w):
  method, teacher, teacher_denoise, student, batch = setup
  z, t, cond = _inputs(batch, w)
  expected = teacher_denoise(teacher, z, t, {"label": cond["label"]})
  for params in (student, method.init_frozen(teacher)):
    got = method.denoise(params, z, t, cond)
    np.testing.assert_allclose(got.x, expected.x, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.eps, expected.eps, rtol=1e-6, atol=1e-7)
  # The new w-embedding is random but its zero-initialised output layer hides it.
  w_layer = student["ConditionEmbedding_0"]
  assert float(jnp.abs(w_layer["Dense_2"]["kernel"]).sum()) > 0
  assert float(jnp.abs(w_layer["w_out"]["kernel"]).sum()) == 0


def test_stage1_target_is_the_guided_teacher(setup):
  """At init the stage-1 loss vanishes at w = 0 and equals ||x_hat_w - x_hat_cond||^2 else."""
  method, teacher, teacher_denoise, student, batch = setup
  frozen = method.init_frozen(teacher)
  x, rng = batch["image"], jax.random.key(6)
  loss = jax.jit(lambda w: guided_w_loss(method.denoise, student, frozen, x,
                                         {"label": batch["label"], "w": jnp.full(x.shape[:1], w)},
                                         rng, method.process, "constant", NUM_CLASSES))
  np.testing.assert_allclose(loss(0.0), 0.0, atol=1e-10)
  w, cond = 2.0, {"label": batch["label"]}

  @jax.jit
  def expected():
    """||x_hat_w - x_hat_cond||^2 of the separate teacher network at the loss's t and z."""
    t_rng, eps_rng, _ = jax.random.split(rng, 3)
    t = jax.random.uniform(t_rng, x.shape[:1])
    z = method.process.noise(x, t, jax.random.normal(eps_rng, x.shape))
    x_w = guided(teacher_denoise, w, NUM_CLASSES)(teacher, z, t, cond).x
    return jnp.mean((x_w - teacher_denoise(teacher, z, t, cond).x) ** 2, axis=1)

  np.testing.assert_allclose(loss(w), expected(), rtol=1e-4, atol=1e-8)
  assert float(jnp.mean(loss(w))) > 1e-4


def test_stage2_passes_w_to_teacher_and_student(setup):
  method, teacher, _, student, batch = setup
  # A stage-1-like teacher whose w-embedding matters, and a different student.
  w_teacher = randomize(student, jax.random.key(7))
  w_student = randomize(student, jax.random.key(8))
  seen = {"teacher": [], "student": []}

  def spy(name):
    def denoise(params, z, t, cond, **kwargs):
      seen[name].append(cond["w"])
      return method.denoise(params, z, t, cond, **kwargs)
    return denoise

  x, n, rng = batch["image"], 4, jax.random.key(9)
  cond = lambda w: {"label": batch["label"], "w": jnp.full(x.shape[:1], w)}
  loss = lambda w, student_fn: progressive_loss(student_fn, w_student, w_teacher, x, cond(w), rng,
                                                n, method.process, "truncated_snr",
                                                teacher_denoise=spy("teacher"))
  loss(1.5, spy("student"))
  assert len(seen["teacher"]) == 2 and len(seen["student"]) == 1
  for w in seen["teacher"] + seen["student"]:
    np.testing.assert_array_equal(w, 1.5)
  # Changing w changes the target (teacher) and the prediction (student) alike: the loss
  # with w = 3 differs from the loss where only the student sees w = 3.
  with_w3 = loss(3.0, spy("student"))
  student_only = loss(1.5, lambda p, z, t, c, **k: method.denoise(p, z, t, dict(c, w=c["w"] * 2)))
  assert float(jnp.max(jnp.abs(with_w3 - loss(1.5, method.denoise)))) > 1e-4
  assert float(jnp.max(jnp.abs(with_w3 - student_only))) > 1e-4


def test_guided_method_switches_loss_by_phase(setup):
  """Phase 0 is the 'guided_w' loss; phase 1 the progressive loss with w in the cond."""
  method, teacher, _, student, batch = setup
  frozen = method.init_frozen(teacher)
  w_teacher = randomize(student, jax.random.key(10))
  rng = jax.random.key(11)
  stage1 = GuidedStage1(gmm_config("guided_w", NUM_CLASSES, guidance=True))
  progressive = ProgressiveDistillation(gmm_config("progressive", NUM_CLASSES, guidance=True))
  loss = jax.jit(method.loss)
  phase0 = {"phase": jnp.asarray(0), "num_steps": jnp.asarray(8)}
  np.testing.assert_allclose(loss(student, frozen, batch, rng, phase0)[0],
                             jax.jit(stage1.loss)(student, frozen, batch, rng, phase0)[0],
                             rtol=1e-4)
  for n in (8, 1):
    phase1 = {"phase": jnp.asarray(1), "num_steps": jnp.asarray(n)}
    np.testing.assert_allclose(loss(student, w_teacher, batch, rng, phase1)[0],
                               jax.jit(progressive.loss)(student, w_teacher, batch, rng, phase1)[0],
                               rtol=1e-4)


def test_loss_and_gradients_are_finite_in_both_phases_at_every_n(setup):
  method, teacher, _, student, batch = setup
  grad_fn = jax.jit(jax.value_and_grad(method.loss, has_aux=True))
  frozen = {0: method.init_frozen(teacher), 1: randomize(student, jax.random.key(12))}
  params = randomize(student, jax.random.key(13))
  for stage in method.stages():
    args = stage.jax_args()
    (value, _), grads = grad_fn(params, frozen[stage.args["phase"]], batch, jax.random.key(14),
                                args)
    assert np.isfinite(float(value)) and value > 0
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_stages_and_boundaries(setup):
  method = setup[0]
  stages = method.stages()
  assert [(s.name, s.args) for s in stages] == [
      ("guided_w", {"num_steps": 8, "phase": 0}), ("4steps", {"phase": 1, "num_steps": 4}),
      ("2steps", {"phase": 1, "num_steps": 2}), ("1steps", {"phase": 1, "num_steps": 1})]
  assert method.next_frozen("teacher", "student") == "student"
  with pytest.raises(ValueError, match="guidance=True"):
    GuidedStage1(gmm_config("guided_w", NUM_CLASSES, guidance=False))


def test_config_sections_and_time_grid():
  """Both methods need `distill` and `guided`; 'guided' (stage 2 at t = i/N) needs the uniform
  grid, stage 1 alone (t ~ U(0, 1)) does not."""
  for name in ("guided", "guided_w"):
    config = gmm_config(name, NUM_CLASSES, guidance=True)
    del config.guided
    with pytest.raises(ValueError, match=f"method '{name}' needs the `guided` config section: "
                                         "use --config=configs/guided.py:<preset>"):
      get_method(config)
  config = gmm_config("guided", NUM_CLASSES, guidance=True)
  config.sample.time_grid = "quadratic"
  with pytest.raises(ValueError, match="uniform grid"):
    get_method(config)
  config.method = "guided_w"
  assert isinstance(get_method(config), GuidedStage1)
  # 'progressive' on a w-conditioned (stage-1) model draws w from the `guided` section.
  config = gmm_config("progressive", NUM_CLASSES, guidance=True)
  del config.guided
  with pytest.raises(ValueError, match="needs the `guided` config section: use --config="
                                       "configs/guided.py:<preset> --config.method=progressive"):
    get_method(config)


@pytest.mark.parametrize("sampler", ["ddim", "stochastic"])
def test_distilled_model_samples_at_any_w(setup, sampler):
  method, _, _, student, _ = setup
  params = randomize(student, jax.random.key(15))
  images = {}
  for w in (0.0, 3.0):
    config = gmm_config("guided", NUM_CLASSES, guidance=True)
    config.sample.update(sampler=sampler, guidance_weight=w)
    m = GuidedDistillation(config)
    images[w] = jax.jit(m.sample, static_argnums=2)(params, jax.random.key(16), 16,
                                                    {"num_steps": jnp.asarray(2)})
    assert images[w].shape == (16, 2) and np.all(np.isfinite(images[w]))
  assert float(jnp.max(jnp.abs(images[0.0] - images[3.0]))) > 1e-3


def test_stage_metrics_phase0_at_init_student_equals_guided_teacher_at_w0(setup):
  method, teacher, _, student, _ = setup
  metrics = jax.jit(method.stage_metrics)(student, method.init_frozen(teacher), jax.random.key(17),
                                          {"phase": jnp.asarray(0), "num_steps": jnp.asarray(4)})
  assert float(metrics["fidelity_mse"]) < 1e-10
  metrics = jax.jit(method.stage_metrics)(student, student, jax.random.key(17),
                                          {"phase": jnp.asarray(1), "num_steps": jnp.asarray(2)})
  assert float(metrics["fidelity_mse"]) > 1e-6
