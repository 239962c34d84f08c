"""`--mode=plan`: will a run fit a TPU slice, and how fast can it go? Answered on any CPU.

  python main.py --mode=plan --config=configs/progressive.py:imagenet64 \
      --config.plan.topology=v5e:4x4 --config.mesh.fsdp=4 --workdir=runs/plan

libtpu's compile-only client gives the abstract devices of the slice; the run's own train
step (the trainer's `train_step`, optimizer, shardings and donation; the teacher's shapes from
its workdir when there is one, else from the config) or its sampling program
(`plan.program=sample`, what `--mode=sample` runs) is compiled for them from shapes alone.
The state's bytes are printed at once; then XLA's per-device plan: argument / temporary /
output bytes and their peak against the chip's HBM, FLOPs, the collectives, and a roofline
lower bound of the step time. A plan that does not fit raises DoesNotFit (main.py exits
non-zero) naming what to change. The table is written to <workdir>/plan_<program>.json/.md.
"""
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from infra.checkpoint import workdir_path
from infra.compiled import compile_with_progress, program_stats, roofline_seconds
from infra.mesh import batch_sharded, check_batch_size, make_mesh, replicated, with_shardings
from infra.topology import GiB, chip_of, topology_devices
from training.abstract import batch_shapes, state_shapes, teacher_shapes
from training.method import get_method
from training.optimizer import make_optimizer
from training.step import jit_train_step, stage_args, state_layout

PROGRAMS = ("train", "sample")
STATE_PARTS = {"params": "student", "ema_params": "EMA", "opt_state": "optimizer",
               "frozen": "teacher (frozen)"}


class DoesNotFit(RuntimeError):
  """The planned program needs more memory per device than the chip has."""


def tree_bytes(shapes, shardings) -> tuple[int, int, int]:
  """(elements, bytes, bytes per device) of a pytree of shapes laid out as `shardings`."""
  leaves = jax.tree.leaves(shapes)
  per_device = sum(int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize
                   for x, s in zip(leaves, jax.tree.leaves(shardings), strict=True))
  return (sum(x.size for x in leaves), sum(x.size * x.dtype.itemsize for x in leaves),
          per_device)


def lower_train(config, method, tx, mesh, state, shardings, teacher):
  """The trainer's jitted step lowered for shapes: the state, one batch, stage 0's args."""
  step = jit_train_step(method, tx, config.optim, mesh, shardings)
  batch = with_shardings(batch_shapes(config, method, teacher), batch_sharded(mesh))
  stages = method.stages()
  stage = with_shardings(stage_args(stages[0], 0, sum(s.num_updates for s in stages)),
                         replicated(mesh))
  return step.lower(with_shardings(state, shardings), batch, stage)


def lower_sample(config, method, mesh, state, shardings):
  """`method.sample` of sample.batch_size images at sample.num_steps, as --mode=sample runs it
  (under the mesh, so its noise is split over the devices)."""
  which = "ema_params" if config.sample.use_ema else "params"
  params = with_shardings(getattr(state, which), getattr(shardings, which))
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated(mesh))
  stage = {"num_steps": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh))}
  sample = jax.jit(method.sample, static_argnums=2, out_shardings=batch_sharded(mesh))
  with jax.set_mesh(mesh):
    return sample.lower(params, rng, config.sample.batch_size, stage)


def plan(config, report=print) -> dict:
  """The plan of `config` on the slice `plan.topology` as one row of the table (with
  plan.compile=False only the state's bytes, from shapes)."""
  program = config.plan.program
  if program not in PROGRAMS:
    raise ValueError(f"plan.program={program!r}; choose one of {PROGRAMS}.")
  devices = topology_devices(config.plan.topology)
  chip, per_chip = chip_of(devices)
  mesh = make_mesh(fsdp=config.mesh.fsdp, devices=devices)
  batch = config.batch_size if program == "train" else config.sample.batch_size
  check_batch_size(mesh, batch)
  method, tx = get_method(config), make_optimizer(config.optim)
  teacher = teacher_shapes(config, method)
  state = state_shapes(config, method, tx, teacher)
  shardings = state_layout(config, mesh, state)
  row = dict(method=config.method, program=program, topology=config.plan.topology,
             chip=chip.name, chips=len(devices) // per_chip, devices=len(devices),
             fsdp=config.mesh.fsdp, remat=bool(config.model.get("remat", False)),
             global_batch=batch, device_batch=batch // len(devices),
             hbm_bytes=chip.hbm_bytes / per_chip)
  for part in STATE_PARTS:
    row[f"{part}_count"], row[f"{part}_bytes"], row[f"{part}_device_bytes"] = tree_bytes(
        getattr(state, part), getattr(shardings, part))
  report(format_plan(row))   # from shapes alone: at once
  if not config.plan.compile:
    return row
  report(f"compiling the {program} program of {config.method!r} for {config.plan.topology} "
         f"({len(devices)} devices; a big UNet takes many minutes on a small CPU)")
  start = time.time()
  lowered = (lower_train(config, method, tx, mesh, state, shardings, teacher)
             if program == "train" else lower_sample(config, method, mesh, state, shardings))
  compiled = compile_with_progress(lowered, f"{config.method} for {config.plan.topology}",
                                   report=report)
  row["compile_s"] = round(time.time() - start, 1)
  row.update(program_stats(compiled))
  row["fits"] = row["peak_bytes"] <= row["hbm_bytes"]
  row["roofline_s"] = roofline_seconds(row["flops"], row["bytes_accessed"],
                                       chip.peak_flops / per_chip, chip.hbm_bandwidth / per_chip)
  report(format_plan(row))
  return row


def plan_run(config, workdir: str, report=print) -> dict:
  """`--mode=plan`: `plan`, its table written to <workdir>/plan_<program>.json and .md;
  raises DoesNotFit when the peak exceeds the chip's HBM."""
  row = plan(config, report)
  if not config.plan.compile:
    return row
  out = workdir_path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"plan_{row['program']}.json").write_text(json.dumps(row, indent=1))
  (out / f"plan_{row['program']}.md").write_text(format_plan(row) + "\n")
  if not row["fits"]:
    raise DoesNotFit(does_not_fit_message(row, config))
  return row


def _gib(n) -> str:
  """Bytes in GiB, or MiB below 1 GiB."""
  return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 2**20:.2f} MiB"


def format_plan(row: dict) -> str:
  """The plan as a two-column markdown table (the compiled rows once there are any)."""
  per_chip = row["devices"] // row["chips"]
  device = "chip" if per_chip == 1 else f"device (1/{per_chip} chip)"
  lines = [f"| {row['method']} {row['program']} on {row['topology']} | |", "|---|---|",
           f"| chips x devices | {row['chips']} x {per_chip} "
           f"({row['chip']}; mesh fsdp={row['fsdp']}) |",
           f"| batch global / per {device} | {row['global_batch']} / {row['device_batch']} |",
           f"| activation remat (model.remat) | {'on' if row['remat'] else 'off'} |"]
  for part, name in STATE_PARTS.items():
    lines.append(f"| {name}: elements, bytes (per {device}) | {row[part + '_count']:,}, "
                 f"{_gib(row[part + '_bytes'])} ({_gib(row[part + '_device_bytes'])}) |")
  if "peak_bytes" in row:
    collectives = ", ".join(f"{k} x{v}" for k, v in sorted(row["collectives"].items()))
    lines += [
        f"| XLA per {device}: arguments / temporaries / outputs | {_gib(row['argument_bytes'])} "
        f"/ {_gib(row['temp_bytes'])} / {_gib(row['output_bytes'])} |",
        f"| peak vs HBM per {device} | {_gib(row['peak_bytes'])} of {_gib(row['hbm_bytes'])}: "
        f"{'fits' if row['fits'] else 'DOES NOT FIT'} |",
        f"| FLOPs per {device} per step | {row['flops']:.4g} |",
        f"| HBM bytes accessed per {device} | {row['bytes_accessed']:.4g} |",
        f"| collectives | {collectives or 'none'} |",
        f"| roofline step time (lower bound) | {row['roofline_s'] * 1e3:.3f} ms |",
        f"| compile time here | {row['compile_s']} s |"]
  return "\n".join(lines)


def does_not_fit_message(row: dict, config) -> str:
  state = sum(row[part + "_device_bytes"] for part in STATE_PARTS)
  remat = ("recompute the activations (--config.model.remat=True), "   # a UNet's, when off
           if row["program"] == "train" and config.model.get("remat") is False else "")
  return (f"{config.method} ({row['program']}) does not fit {row['topology']}: the peak is "
          f"{_gib(row['peak_bytes'])} per device, the chip has {_gib(row['hbm_bytes'])} "
          f"(the train state {_gib(state)} of it, temporaries {_gib(row['temp_bytes'])}). "
          f"Shard the state with a larger --config.mesh.fsdp (now {row['fsdp']}), {remat}lower "
          f"--config.batch_size (now {config.batch_size}; sample.batch_size for sampling), or "
          f"plan a larger slice or a chip with more HBM (--config.plan.topology).")
