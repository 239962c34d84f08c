"""Shared set-up of the distillation tests: 2-D Gaussian-mixture data and small MLP configs."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs.base import base_config
from diffusion.analytic import GaussianMixture
from diffusion.networks import init_params

# Three well-separated classes in 2-D.
MIXTURE = GaussianMixture(weights=np.array([0.3, 0.3, 0.4], np.float32),
                          means=np.array([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], np.float32),
                          variances=np.full((3, 2), 0.05, np.float32),
                          labels=np.array([0, 1, 2]))


def gmm_config(method="progressive", num_classes=0, guidance=False, parameterization="v",
               teacher_steps=8, hidden=64, depth=2):
  """A distillation config for MIXTURE data with an MLP network."""
  c = base_config("digits")
  c.method = method
  c.data.shape = (2,)
  c.model = ml_collections.ConfigDict(dict(name="mlp", hidden=hidden, depth=depth,
                                           num_classes=num_classes, guidance=guidance,
                                           dropout=0.0))
  c.diffusion.parameterization = parameterization
  c.distill = ml_collections.ConfigDict(dict(teacher_steps=teacher_steps, min_steps=1,
                                             steps_per_stage=10, fidelity_samples=16,
                                             weighting="truncated_snr"))
  c.guided = ml_collections.ConfigDict(dict(w_min=0.0, w_max=4.0, w_steps=10))
  c.sample.update(num_samples=16, labels="", clip_x=False)   # not image data: means at +-1.5
  return c


def gmm_batch(rng, n):
  x, labels = MIXTURE.sample(rng, n)
  return {"image": x, "label": labels.astype(jnp.int32)}


@functools.partial(jax.jit, static_argnums=(1, 2))
def _draws(keys, size, dtype):
  """normal(key, (size,), dtype) for every key, one row each."""
  return jax.vmap(lambda key: jax.random.normal(key, (size,), dtype))(keys)


def normal_tree(params, rng):
  """A tree like `params` of numpy arrays: leaf i is normal(split(rng)[i], its shape, dtype),
  read as the first values of one vmapped draw per dtype (with jax_threefry_partitionable a
  draw's values do not depend on its shape), which compiles one program where a draw per leaf
  compiles one per leaf shape."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(rng, len(leaves))
  size = max(leaf.size for leaf in leaves)
  draws = {d: np.asarray(_draws(keys, size, d)) for d in {leaf.dtype for leaf in leaves}}
  return jax.tree.unflatten(tree, [draws[leaf.dtype][i, :leaf.size].reshape(leaf.shape)
                                   for i, leaf in enumerate(leaves)])


def randomize(params, rng, scale=0.3):
  """Every leaf replaced by N(0, scale^2) noise (so zero-initialised output layers act):
  scale * `normal_tree`."""
  return jax.tree.map(lambda n: jnp.asarray(scale * n), normal_tree(params, rng))


def random_params(network, shape, rng, scale=0.3):
  """`randomize` of `network`'s parameters for inputs of shape `shape` (init_params' shapes
  alone: no initialiser runs)."""
  return randomize(jax.eval_shape(lambda: init_params(network, jax.random.key(0), shape)), rng,
                   scale)
