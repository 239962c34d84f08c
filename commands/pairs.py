"""`--mode=pairs`: write (or finish) a run's offline teacher samples (Method.offline_data()).

  python main.py --mode=pairs --config=configs/denoising_student.py:digits \
      --config.teacher.workdir=runs/teacher --workdir=runs/student

writes <workdir>/pairs (or `offline_dir`) with the teacher's EMA parameters; rerun it after
an interruption (finished shards are kept); on a pod run it on every host.
"""
import jax

from training import offline
from training.method import get_method
from training.offline_run import offline_dir
from training.pretrained import load_teacher


def require_spec(method) -> offline.OfflineData:
  spec = method.offline_data()
  if spec is None:
    raise ValueError(f"Method {method.config.method!r} trains on no offline data: "
                     f"--mode=pairs is for methods such as denoising_student.")
  return spec


def write_offline_data(config, workdir, mesh=None) -> dict:
  """`--mode=pairs`: write (or finish) the run's offline data; returns cost.json's dict."""
  method = get_method(config)
  spec = require_spec(method)
  teacher = load_teacher(config, mesh) if method.needs_teacher else {}
  directory = offline_dir(config, workdir)
  cost = offline.write(spec, teacher, directory, label=f"{config.method} data")
  if jax.process_index() == 0:
    print(f"{directory}: {cost['rows']} rows, {cost['evaluations']:.0f} generator evaluations "
          f"in {cost['seconds']:.1f} s ({cost['rows_per_second']:.1f} rows/s); cost.json written")
  return cost
