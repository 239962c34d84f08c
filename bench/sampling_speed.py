r"""Speed of the DDIM sampler against network evaluations (the sampler's loop overhead).

  python -m bench.sampling_speed [--batch=64] [--repeats=5] [--steps=1,2,4,8,16,32,64]

A digits-sized UNet (8x8x1 images) with random parameters: timing needs no training.
The sampler is jitted once with a traced num_steps (one program serves every N). All
times are medians over repeats after compilation, with block_until_ready. For each N
the sampler alternates with N chained evaluations dispatched one by one from Python,
so both see the same load on a shared machine. Prints a table and a JSON line with
time(N), overhead = time(N) / (N * time(one evaluation)) and
loop_vs_chain = time(N) / time(N chained evaluations).
"""
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from diffusion.denoiser import make_denoiser, model_apply_fn
from diffusion.networks import init_params
from diffusion.processes import get_process
from diffusion.unet import UNet
from sampling import get_sampler

flags.DEFINE_integer("batch", 64, "Batch size.")
flags.DEFINE_integer("repeats", 5, "Timed repeats per measurement (median reported).")
flags.DEFINE_list("steps", ["1", "2", "4", "8", "16", "32", "64"], "Sampler step counts N.")
FLAGS = flags.FLAGS


def wall_time(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def interleaved_medians(fns, repeats: int):
  """Median wall time of each thunk in `fns`, timed in turn `repeats` times (after a warm-up)."""
  for fn in fns:
    jax.block_until_ready(fn())
  times = np.array([[wall_time(fn) for fn in fns] for _ in range(repeats)])
  return np.median(times, axis=0).tolist()


def random_params(network, rng):
  """Initial parameters plus small noise, so the zero-initialised output layers are not zero."""
  init_rng, noise_rng = jax.random.split(rng)
  params = init_params(network, init_rng, (8, 8, 1))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(noise_rng, len(leaves))
  return treedef.unflatten([p + 0.02 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def main(_):
  network = UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_classes=0)
  process = get_process("cosine")
  denoise = make_denoiser(model_apply_fn(network), process, "eps")
  params = random_params(network, jax.random.key(0))
  z = jax.random.normal(jax.random.key(1), (FLAGS.batch, 8, 8, 1))

  evaluate = jax.jit(lambda params, z, t: denoise(params, z, t, None).x)
  sample = jax.jit(lambda params, z, n: get_sampler("ddim")(denoise, params, z, process=process,
                                                            num_steps=n))
  compile_s = wall_time(lambda: sample(params, z, jnp.int32(1)))
  t_half = jnp.float32(0.5)
  (eval_s,) = interleaved_medians([lambda: evaluate(params, z, t_half)], FLAGS.repeats)

  def chain(n):
    x = z
    for _ in range(n):
      x = evaluate(params, x, t_half)
    return x

  rows = []
  for n in map(int, FLAGS.steps):
    steps = jnp.int32(n)
    t, t_chain = interleaved_medians([lambda: sample(params, z, steps), lambda: chain(n)],
                                     FLAGS.repeats)
    rows.append({"num_steps": n, "seconds": t, "chain_seconds": t_chain,
                 "overhead": t / (n * eval_s), "loop_vs_chain": t / t_chain})

  print(f"batch {FLAGS.batch}, devices {jax.device_count()} ({jax.devices()[0].platform}), "
        f"sampler compile {compile_s:.1f} s, one network evaluation {eval_s * 1e3:.2f} ms")
  print(f"{'N':>4} {'time (ms)':>10} {'ms / step':>10} {'time / (N eval)':>16} "
        f"{'time / (N chained)':>19}")
  for r in rows:
    n = r["num_steps"]
    print(f"{n:>4} {r['seconds'] * 1e3:>10.2f} {r['seconds'] * 1e3 / n:>10.2f}"
          f" {r['overhead']:>16.3f} {r['loop_vs_chain']:>19.3f}")
  print(json.dumps({"batch": FLAGS.batch, "eval_seconds": eval_s, "compile_seconds": compile_s,
                    "ddim": rows}))


if __name__ == "__main__":
  app.run(main)
