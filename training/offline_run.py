"""A run's offline data (Method.offline_data()): where they live, the command that makes
them (`--mode=pairs`), and the training / held-out iterators the trainer reads.

  python main.py --mode=pairs --config=configs/denoising_student.py:digits \
      --config.teacher.workdir=runs/teacher --workdir=runs/student

writes <workdir>/pairs (or `offline_dir`) with the teacher's EMA parameters; rerun it after
an interruption (finished shards are kept); on a pod run it on every host. Training then
reads them; a missing or incomplete set is an error that names this command.
"""
import json

from etils import epath

from infra.checkpoint import workdir_path
from training import offline_source


def offline_dir(config, workdir) -> epath.Path:
  """`config.offline_dir`, or <workdir>/pairs."""
  return epath.Path(config.offline_dir) if config.offline_dir else workdir_path(workdir) / "pairs"


def pairs_command(workdir) -> str:
  return (f"python main.py --mode=pairs --workdir={workdir} <the same --config flags as the "
          f"training run>")


def generation_cost(config, workdir):
  """The one-off cost of the run's offline data (cost.json: rows, evaluations, seconds, ...),
  or None when the run has none; for reports."""
  path = offline_dir(config, workdir) / "cost.json"
  return json.loads(path.read_text()) if path.exists() else None


def train_iterator(config, workdir):
  return offline_source.make_train_iterator(offline_dir(config, workdir), config.data,
                                            config.batch_size, config.seed,
                                            pairs_command(workdir))


def heldout_iterator(config, workdir):
  return offline_source.make_eval_iterator(offline_dir(config, workdir), config.data,
                                           config.batch_size, pairs_command(workdir))
