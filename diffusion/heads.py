"""Networks with several outputs (Catch-Up Distillation's Runge-Kutta heads).

A network built with `output_heads = H > 1` returns, from ONE forward, the tuple
(head 1 = its main output, head 2, ..., head H); each extra head is a small zero-initialised
layer on the network's last features, so it starts at exactly zero. With H = 1 the network
returns its output alone, as every single-output network does. Losses see every head through
`head_outputs`; a Denoiser for sampling is built over one head with `select_head`.
"""


def with_extra_heads(o, features, output_heads: int, make_head):
  """o alone when output_heads == 1, else (o, head_2(features), ..., head_H(features)), head j
  the module make_head(f'head{j}')."""
  if output_heads == 1:
    return o
  return (o,) + tuple(make_head(f"head{j}")(features) for j in range(2, output_heads + 1))


def head_outputs(o) -> tuple:
  """A network output as the tuple of its heads (a single-output network has one)."""
  return o if isinstance(o, tuple) else (o,)


def select_head(apply_fn, head: int):
  """The `apply_fn` of a multi-head network reduced to head `head` (1 = the main output), e.g.
  for `diffusion.denoiser.make_denoiser`."""
  if head < 1:
    raise ValueError(f"Heads are numbered from 1 (the main output); got head={head}.")

  def apply_head(*args, **kwargs):
    heads = head_outputs(apply_fn(*args, **kwargs))
    if head > len(heads):
      raise ValueError(f"head={head} but the network has {len(heads)} output head(s).")
    return heads[head - 1]

  return apply_head
