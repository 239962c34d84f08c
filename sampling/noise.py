"""Standard normal noise shaped like a sampler state that may be a pytree (nested z, one leaf
per resolution, lowest first)."""
import jax


def normal_like(key, z):
  """Independent N(0, I) per leaf of z (arrays or jax.ShapeDtypeStructs): the last leaf (the
  highest resolution, or z itself when it is one array) draws normal(key), leaf i before it
  normal(fold_in(key, i)). So the highest resolution gets exactly the noise a single-resolution
  sampler draws with the same key, and the lower ones fresh noise."""
  leaves, tree = jax.tree.flatten(z)
  last = len(leaves) - 1
  return jax.tree.unflatten(tree, [
      jax.random.normal(key if i == last else jax.random.fold_in(key, i), leaf.shape, leaf.dtype)
      for i, leaf in enumerate(leaves)])
