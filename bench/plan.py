"""The pod-planning table: presets x TPU topologies x mesh.fsdp, from `--mode=plan`'s `plan`.

  python -m bench.plan [--runs=teacher:cifar10,progressive:imagenet64,...]
      [--topologies=v5e:4x4,v4:2x2x2] [--fsdp=1,4] [--remat=0,1] [--shapes_only]
      [--out=runs/plan_bench]

Each row: the per-device state (student, EMA, Adam, teacher) from shapes, and unless
--shapes_only XLA's per-device peak against the chip's HBM, FLOPs and the roofline step
time of the train step compiled for the topology with libtpu (no TPU needed; a big UNet
takes 20+ minutes per compile on a 2-core CPU). Writes <out>/plan.md and plan.json.
"""
import importlib
import itertools
import json
import os

from absl import app, flags

from commands.plan import STATE_PARTS, plan   # importing commands registers the methods
from infra.topology import GiB

RUNS = ",".join(f"{m}:{p}" for p in ("cifar10", "imagenet64")
                for m in ("teacher", "progressive", "guided", "consistency", "sid"))
flags.DEFINE_string("runs", RUNS, "method config file:preset pairs (configs/<file>.py).")
flags.DEFINE_string("topologies", "v5e:4x4,v4:2x2x2", "libtpu topology names.")
flags.DEFINE_string("fsdp", "1,4", "mesh.fsdp values.")
flags.DEFINE_string("remat", "0", "model.remat values (0 = off, 1 = on).")
flags.DEFINE_bool("shapes_only", False, "Only the state's bytes from shapes (instant).")
flags.DEFINE_string("out", "runs/plan_bench", "Output directory.")
FLAGS = flags.FLAGS

COLUMNS = ("run", "topology", "fsdp", "remat", "batch/device", "state GiB/device",
           "peak GiB/device", "HBM GiB", "fits", "TFLOP/device", "roofline ms", "compile s")


def table_row(run: str, row: dict) -> list:
  """The row's cells in COLUMNS order ('-' for what was not compiled)."""
  state = sum(row[f"{part}_device_bytes"] for part in STATE_PARTS)
  compiled = "peak_bytes" in row
  cell = lambda key, f: f(row[key]) if compiled else "-"
  return [run, row["topology"], row["fsdp"], "on" if row["remat"] else "off",
          row["device_batch"], f"{state / GiB:.2f}",
          cell("peak_bytes", lambda b: f"{b / GiB:.2f}"), f"{row['hbm_bytes'] / GiB:.0f}",
          cell("fits", lambda f: "yes" if f else "NO"), cell("flops", lambda f: f"{f / 1e12:.3f}"),
          cell("roofline_s", lambda s: f"{s * 1e3:.1f}"), cell("compile_s", str)]


def main(argv):
  del argv
  rows, lines = [], ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for run in FLAGS.runs.split(","):
    name, preset = run.split(":")
    for topology in FLAGS.topologies.split(","):
      for fsdp, remat in itertools.product(map(int, FLAGS.fsdp.split(",")),
                                           map(int, FLAGS.remat.split(","))):
        config = importlib.import_module(f"configs.{name}").get_config(preset)
        config.plan.update(topology=topology, compile=not FLAGS.shapes_only)
        config.mesh.fsdp = fsdp
        config.model.remat = bool(remat)
        row = dict(plan(config, report=lambda line: print(line, flush=True)), run=run)
        rows.append(row)
        lines.append("| " + " | ".join(map(str, table_row(run, row))) + " |")
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "plan.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(FLAGS.out, "plan.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
