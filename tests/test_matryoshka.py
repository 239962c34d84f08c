"""Matryoshka Diffusion: the NestedUNet's nesting, the noise, sampling, configs, progressive
growth and the trainer (resume, devices); the math against independent paths is in
tests/test_matryoshka_math.py."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.matryoshka import get_config as matryoshka_config
from configs.teacher import get_config as teacher_config
from diffusion.nested_unet import nested_resolutions
from diffusion.networks import build_network, init_params
from distillation.matryoshka import avg_pool
from infra.mesh import make_mesh
from infra.params import load_params
from sampling.noise import normal_like
from tests.distill_fixtures import random_params, randomize
from training.method import get_method
from training.trainer import Trainer

INNER = dict(name="unet", ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(2,),
             num_classes=3)
NESTED = dict(name="nested_unet", ch=8, ch_mult=(1, 2), num_res_blocks=1, num_classes=3,
              inner=INNER)
TIME = jnp.array([0.3, -4.0, 11.0])
LABEL = jnp.array([0, 2, 3])


@functools.cache
def grown_network():
  """(nested, inner, params): a fresh 8x8 shell around a 4x4 UNet with non-trivial parameters."""
  nested, inner = build_network(NESTED), build_network(INNER)
  inner_params = random_params(inner, (4, 4, 1), jax.random.key(2))
  params = dict(init_params(nested, jax.random.key(0), ((4, 4, 1), (8, 8, 1))),
                inner=inner_params)
  return nested, inner, params


def test_fresh_shell_keeps_the_inner_outputs_bit_for_bit_and_ignores_z_hi():
  nested, inner, params = grown_network()
  assert nested_resolutions(nested, 8) == (4, 8)
  z_lo = jax.random.normal(jax.random.key(3), (3, 4, 4, 1))
  alone = inner.apply({"params": params["inner"]}, z_lo, TIME, label=LABEL)
  assert float(jnp.abs(alone).max()) > 0.1
  for k in range(3):
    z_hi = (k + 1) * jax.random.normal(jax.random.key(10 + k), (3, 8, 8, 1))
    # Op by op, the inner runs exactly the same operations as the UNet alone.
    o_lo, o_hi = nested.apply({"params": params}, (z_lo, z_hi), TIME, label=LABEL)
    np.testing.assert_array_equal(o_lo, alone)
    assert o_hi.shape == (3, 8, 8, 1)

  def low_output(z_hi):
    return jnp.sum(nested.apply({"params": params}, (z_lo, z_hi), TIME, label=LABEL)[0] ** 2)

  grad = jax.jit(jax.grad(low_output))(z_hi)   # one program (op by op, the vjp compiles many)
  np.testing.assert_array_equal(grad, jnp.zeros_like(grad))


def test_trained_shell_couples_the_resolutions():
  """Once the adapters are non-zero, z_hi reaches the low-resolution output and vice versa."""
  nested, _, params = grown_network()
  params = randomize(params, jax.random.key(4))
  z_lo = jax.random.normal(jax.random.key(3), (3, 4, 4, 1))
  z_hi = jax.random.normal(jax.random.key(5), (3, 8, 8, 1))
  f = lambda z_lo, z_hi: nested.apply({"params": params}, (z_lo, z_hi), TIME, label=LABEL)
  o_lo, o_hi = f(z_lo, z_hi)
  moved_lo = f(z_lo, z_hi + 0.5)[0]   # z_hi moves: the low-resolution output follows
  moved_hi = f(z_lo + 0.5, z_hi)[1]   # and the other way
  assert float(jnp.abs(moved_lo - o_lo).max()) > 1e-2
  assert float(jnp.abs(moved_hi - o_hi).max()) > 1e-2


def test_three_levels_and_a_wrong_nesting():
  three = build_network(dict(NESTED, inner=dict(NESTED)))
  assert nested_resolutions(three, 16) == (4, 8, 16)
  shapes = ((4, 4, 1), (8, 8, 1), (16, 16, 1))
  params = init_params(three, jax.random.key(0), shapes)
  assert set(params["inner"]) >= {"inner", "in_adapter", "out_adapter"}
  z = tuple(jnp.ones((2,) + s) for s in shapes)
  outs = three.apply({"params": params}, z, TIME[:2])
  assert [o.shape for o in outs] == [(2,) + s for s in shapes]
  with pytest.raises(ValueError, match="the next lower resolution must be 8"):
    init_params(three, jax.random.key(0), ((2, 2, 1), (4, 4, 1), (16, 16, 1)))


# ---- the processes, the loss, the noise ------------------------------------------------------

def tiny_config(**mdm):
  """The digits preset with the tiny grown network of these tests, class-conditional."""
  c = matryoshka_config("digits")
  c.model = ml_collections.ConfigDict(dict(NESTED, num_classes=10, guidance=False,
                                           inner=dict(INNER, num_classes=10)))
  c.mdm.update(mdm)
  return c


@functools.cache
def grown_method(weights=(1.0, 1.0)):
  """(method, params, inner params): the tiny digits run, its shell fresh around a UNet."""
  method = get_method(tiny_config(loss_weights=weights))
  inner = build_network(method.config.model.inner)
  inner_params = random_params(inner, (4, 4, 1), jax.random.key(2), 0.1)
  return method, method.init(jax.random.key(0), inner_params), inner_params, inner


def digits_batch(n=16, seed=0):
  x = jax.random.uniform(jax.random.key(seed), (n, 8, 8, 1), minval=-1.0, maxval=1.0)
  return {"image": x, "label": jnp.arange(n, dtype=jnp.int32) % 10}


def test_noise_is_independent_across_resolutions():
  """corr(eps_lo, avgpool(eps_hi) * 2) over many draws is ~0 (it is 1 for pooled noise)."""
  shapes = (jax.ShapeDtypeStruct((4096, 4, 4, 1), jnp.float32),
            jax.ShapeDtypeStruct((4096, 8, 8, 1), jnp.float32))
  eps_lo, eps_hi = normal_like(jax.random.key(0), shapes)
  pooled = 2.0 * avg_pool(eps_hi, 4)     # unit variance, what ml-mdm redraws away
  corr = float(jnp.corrcoef(eps_lo.ravel(), pooled.ravel())[0, 1])
  assert abs(corr) < 0.02, corr
  np.testing.assert_allclose(jnp.std(pooled), 1.0, rtol=0.02)
  # The highest resolution draws what a plain model's z_1 draws from the same key.
  np.testing.assert_array_equal(eps_hi, jax.random.normal(jax.random.key(0), (4096, 8, 8, 1)))


@pytest.mark.parametrize("sampler", ["ddim", "ancestral", "heun"])
def test_sampling_returns_the_highest_resolution(sampler):
  config = tiny_config()
  config.sample.update(sampler=sampler, guidance_weight=1.5)
  method = get_method(config)
  _, params, _, _ = grown_method()
  stage = {"num_steps": 3}
  both = jax.jit(method.sample_resolutions, static_argnums=2)(params, jax.random.key(5), 4, stage)
  assert [a.shape for a in both] == [(4, 4, 4, 1), (4, 8, 8, 1)]
  for images in both:
    assert bool(jnp.all(jnp.isfinite(images)))
    assert float(jnp.max(jnp.abs(images))) <= 1.0        # sample.clip_x


def test_config_checks():
  with pytest.raises(ValueError, match=r"mdm.resolutions \[3\] do not divide the 8x8 data"):
    get_method(tiny_config(resolutions=(8, 3)))
  with pytest.raises(ValueError, match="needs one weight per resolution"):
    get_method(tiny_config(loss_weights=(1.0,)))
  with pytest.raises(ValueError, match=r"takes the resolutions \(8, 4\) \(highest first\) but "
                                       r"mdm.resolutions=\(8, 2\)"):
    get_method(tiny_config(resolutions=(8, 2)))
  method, params, inner_params, _ = grown_method()
  wrong = dict(inner_params, Conv_0={"kernel": jnp.zeros((3, 3, 1, 4)),
                                     "bias": jnp.zeros((4,))})
  with pytest.raises(ValueError, match=r"inner model in mdm.inner_workdir.*different shapes "
                                       r"\[\(\"\['Conv_0'\]\['bias'\]\", \(8,\), \(4,\)\)"):
    method.init(jax.random.key(0), wrong)


@pytest.mark.parametrize("preset", ["digits", "fashion_mnist", "mnist", "cifar10", "imagenet64"])
def test_presets_nest_their_resolutions(preset):
  for name in (preset, f"{preset}_inner"):
    method = get_method(matryoshka_config(name))
    assert method.resolutions == tuple(sorted(matryoshka_config(name).mdm.resolutions))
    assert method.stages()[0].args["num_steps"] == method.config.sample.num_steps


@pytest.mark.parametrize("preset,size", [("digits", 8), ("fashion_mnist_cpu", 28)])
def test_small_presets_have_the_teachers_width_and_at_most_its_parameters(preset, size):
  """digits_all and fashion_mnist_cpu compare Matryoshka with its teacher at equal parameters:
  the full-resolution shell as wide as the teacher, the whole within 80-100% of its parameters
  (digits 184,538 against 193,441)."""
  count = lambda model, shape: sum(x.size for x in jax.tree.leaves(jax.eval_shape(
      lambda: init_params(build_network(model), jax.random.key(0), shape))))
  mdm, teacher = matryoshka_config(preset), teacher_config(preset)
  assert mdm.model.ch == teacher.model.ch
  shapes = tuple((r, r, 1) for r in sorted(mdm.mdm.resolutions))
  n_mdm, n_teacher = count(mdm.model, shapes), count(teacher.model, (size, size, 1))
  assert 0.8 * n_teacher <= n_mdm <= n_teacher, (n_mdm, n_teacher)


# ---- through the trainer: growth, resume, devices --------------------------------------------

TRAINER_INNER = dict(name="unet", ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                     num_heads=1, dropout=0.0, num_classes=0, guidance=False, dtype="float32")


def run_config(num_train_steps, inner_workdir="", resolutions=(8, 4)):
  """A tiny digits run: (8, 4) with a fresh 8x8 shell around a 4x4 UNet, or (4,) the UNet alone."""
  c = matryoshka_config("digits")
  model = dict(name="nested_unet", ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
               num_heads=1, dropout=0.0, num_classes=0, guidance=False, dtype="float32",
               inner=TRAINER_INNER)
  c.model = ml_collections.ConfigDict(model if len(resolutions) > 1 else TRAINER_INNER)
  c.mdm.update(resolutions=resolutions, loss_weights=(1.0,) * len(resolutions),
               inner_workdir=inner_workdir)
  c.batch_size, c.num_train_steps = 8, num_train_steps
  c.checkpoint_every_steps, c.log_every_steps, c.sample_every_steps = 2, 2, 1000
  c.sample.update(num_steps=2, num_samples=8, batch_size=8)
  c.optim.warmup_steps = 2
  c.data.read_threads = 0
  return c


@pytest.fixture(scope="module")
def inner_dir(tmp_path_factory):
  """A trained 4x4 UNet on digits average-pooled to 4x4 (the `digits_inner` kind of run)."""
  workdir = str(tmp_path_factory.mktemp("inner"))
  Trainer(run_config(4, resolutions=(4,)), workdir, make_mesh(1)).run()
  return workdir


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.ema_params, state.opt_state, state.step)))]


def test_grown_run_resumes_bit_exactly(tmp_path, inner_dir):
  start = Trainer(run_config(4, inner_dir), str(tmp_path / "start"), make_mesh(1))
  # The inner starts as the trained UNet's EMA, the shell fresh.
  trained, _, _ = load_params(inner_dir)
  for a, b in zip(jax.tree.leaves(start.state.params["inner"]), jax.tree.leaves(trained),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  full = start.run()
  assert any(not np.array_equal(a, b) for a, b in zip(     # nothing frozen: the inner trained on
      jax.tree.leaves(full.params["inner"]), jax.tree.leaves(trained)))
  workdir = str(tmp_path / "interrupted")
  Trainer(run_config(2, inner_dir), workdir, make_mesh(1)).run()
  # The restart resumes from the checkpoint (the inner workdir is not read again).
  resumed = Trainer(run_config(4, inner_dir), workdir, make_mesh(1)).run()
  for a, b in zip(_leaves(full), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)


def test_one_and_eight_devices_agree_from_scratch(tmp_path):
  """The nested model trained from scratch (no inner_workdir), on 1 and on 8 devices."""
  one = Trainer(run_config(4), str(tmp_path / "one"), make_mesh(1)).run()
  eight = Trainer(run_config(4), str(tmp_path / "eight"), make_mesh(8)).run()
  for a, b in zip(_leaves(one), _leaves(eight), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_growth_around_the_wrong_model_names_the_parameters(tmp_path, inner_dir):
  config = run_config(4, inner_dir)
  config.model.inner.ch = 12
  with pytest.raises(ValueError, match=r"inner model in mdm.inner_workdir=.*different shapes"):
    Trainer(config, str(tmp_path / "wrong"), make_mesh(1))
