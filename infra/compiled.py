"""What XLA planned for a compiled program, per device: memory, FLOPs, bytes moved, the
collectives, and the roofline lower bound of its run time."""
import collections
import re
import threading
import time

import jax

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_COLLECTIVE = re.compile(r"\b(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


def compile_with_progress(lowered, label: str, every: float = 30.0, report=print):
  """`lowered.compile()`, reporting the seconds spent every `every` s while XLA works (a big
  UNet takes minutes on a small CPU). Nothing is written to the persistent cache: an
  executable of the compile-only TPU client cannot be loaded back from it."""
  done, start = threading.Event(), time.time()

  def tick():
    while not done.wait(every):
      report(f"  still compiling {label}: {time.time() - start:.0f} s")
  threading.Thread(target=tick, daemon=True).start()
  floor = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
  try:
    return lowered.compile()
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", floor)
    done.set()


def count_collectives(hlo_text: str) -> dict:
  """{op: count} of the collective ops in an HLO module's text (an async pair counted once)."""
  return dict(collections.Counter(_COLLECTIVE.findall(hlo_text)))


def program_stats(compiled) -> dict:
  """Per-device bytes of arguments, temporaries, outputs (less those aliased to donated
  arguments) and code, their sum `peak`, FLOPs and bytes accessed, and the collectives."""
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  stats = dict(argument_bytes=memory.argument_size_in_bytes,
               temp_bytes=memory.temp_size_in_bytes,
               output_bytes=memory.output_size_in_bytes - memory.alias_size_in_bytes,
               code_bytes=memory.generated_code_size_in_bytes,
               flops=float(cost.get("flops", 0.0)),
               bytes_accessed=float(cost.get("bytes accessed", 0.0)),
               collectives=count_collectives(compiled.as_text()))
  stats["peak_bytes"] = (stats["argument_bytes"] + stats["temp_bytes"] + stats["output_bytes"]
                         + stats["code_bytes"])
  return stats


def roofline_seconds(flops: float, bytes_accessed: float, peak_flops: float,
                     bandwidth: float) -> float:
  """The time no device can beat: max(FLOPs / peak FLOP/s, bytes / memory bandwidth)."""
  return max(flops / peak_flops, bytes_accessed / bandwidth)
