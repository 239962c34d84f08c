"""The state split along an 'fsdp' mesh axis (mesh.fsdp = 4 of 8 devices) trains like the
replicated state to round-off, for a teacher and across the stages of progressive
distillation; its checkpoints restore bit for bit onto a replicated mesh and onto fsdp = 2."""
import jax
import numpy as np

from infra.mesh import make_mesh, shard_batch
from tests.pod_configs import tiny_distill
from tests.tiny_config import tiny_teacher_config
from training.trainer import Trainer

MIN_SIZE = 256     # mesh.fsdp_min_size: the tiny MLP's 32 x 32 kernels are split, its biases not


def _config(config=None, **overrides):
  config = config or tiny_teacher_config(**overrides)
  config.mesh.fsdp_min_size = MIN_SIZE
  return config


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.ema_params, state.opt_state, state.frozen, state.step)))]


def _split_kernels(tree, fsdp):
  """Every 2-D leaf (the kernels) is held as 1/fsdp of it per device, every 1-D leaf whole."""
  for leaf in jax.tree.leaves(tree):
    shard = leaf.addressable_shards[0].data.shape
    if leaf.ndim == 2:
      assert np.prod(shard) * fsdp == leaf.size, (leaf.shape, shard)
    else:
      assert shard == leaf.shape


def _losses(trainer, steps):
  state, losses = trainer.state, []
  for _ in range(steps):
    state, metrics = trainer.step_fn(state, shard_batch(trainer.mesh, next(trainer.data_iter)),
                                     trainer.stage_args(0))
    losses.append(float(metrics["loss"]))
  return state, losses


def test_teacher_with_fsdp_4_matches_the_replicated_run(tmp_path):
  runs = {fsdp: Trainer(_config(), str(tmp_path / str(fsdp)), make_mesh(8, fsdp=fsdp))
          for fsdp in (1, 4)}
  (replicated, losses), (sharded, sharded_losses) = (_losses(runs[f], 4) for f in (1, 4))
  for tree in (sharded.params, sharded.ema_params, sharded.opt_state.inner_state):
    _split_kernels(tree, 4)
  _split_kernels(replicated.params, 1)
  np.testing.assert_allclose(losses, sharded_losses, rtol=1e-6)
  for a, b in zip(_leaves(replicated), _leaves(sharded), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_progressive_with_fsdp_4_matches_the_replicated_run(tmp_path, teacher_dir):
  """4 updates over two halvings: the student becomes the (sharded) teacher in between."""
  config = _config(tiny_distill())
  config.teacher.workdir = teacher_dir
  states = {fsdp: Trainer(config, str(tmp_path / str(fsdp)), make_mesh(8, fsdp=fsdp)).run()
            for fsdp in (1, 4)}
  assert int(states[4].stage_index) == 1
  _split_kernels(states[4].frozen, 4)
  for a, b in zip(_leaves(states[1]), _leaves(states[4]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_fsdp_4_checkpoint_restores_bit_exact_onto_replicated_and_fsdp_2(tmp_path):
  workdir = str(tmp_path / "run")
  written = Trainer(_config(num_train_steps=3), workdir, make_mesh(8, fsdp=4)).run()
  _split_kernels(written.params, 4)
  for fsdp in (1, 2):
    restored = Trainer(_config(num_train_steps=3), workdir, make_mesh(8, fsdp=fsdp)).state
    assert int(restored.step) == 3
    _split_kernels(restored.params, fsdp)
    _split_kernels(restored.opt_state.inner_state, fsdp)
    for a, b in zip(_leaves(written), _leaves(restored), strict=True):
      np.testing.assert_array_equal(a, b)
