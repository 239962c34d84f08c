"""`--mode=plan`: a tiny config compiled for a v5e:2x2 slice with libtpu (no TPU here): XLA's
per-chip argument bytes against the parameter count, replicated and with fsdp = 4; the
sampling program; a data-free method; a UNet with model.remat; the errors a user sees."""
import json

import jax
import numpy as np
import pytest

from commands.plan import DoesNotFit, does_not_fit_message, plan_run
from configs.base import base_config
from configs.boot import boot_config
from diffusion.networks import build_network, init_params
from infra import topology
from tests.tiny_config import tiny_teacher_config

CHIPS = 4            # v5e:2x2
MIN_SIZE = 4096      # mesh.fsdp_min_size: the MLP's kernels are sharded, its biases not
PADDING = 64 * 1024  # bytes: TPU tiles pad the small arrays (biases, the batch, scalars)


def _config(fsdp=1, program="train"):
  """An MLP over 128-d data whose kernels (128 or 512 wide) stay whole TPU tiles when split
  in four, so XLA's bytes of the sharded state are exact."""
  config = tiny_teacher_config(**{"model.hidden": 512, "data.shape": (128,)})
  config.plan.update(topology="v5e:2x2", program=program)
  config.mesh.update(fsdp=fsdp, fsdp_min_size=MIN_SIZE)
  return config


def _param_shapes(config):
  """The MLP's parameter shapes, straight from the network (not from the planner)."""
  network = build_network(config.model)
  return [x.shape for x in jax.tree.leaves(jax.eval_shape(
      lambda: init_params(network, jax.random.PRNGKey(0), config.data.shape)))]


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
  out = tmp_path_factory.mktemp("plan")
  return {fsdp: plan_run(_config(fsdp), str(out / str(fsdp)), report=lambda _: None)
          for fsdp in (1, 4)}


def _elements_per_chip(shapes, fsdp):
  """Each leaf's elements on one chip: 1/fsdp of the leaves of >= MIN_SIZE elements with a
  dimension that fsdp divides (the MLP's kernels), all of the others."""
  def per_chip(shape):
    size = int(np.prod(shape))
    split = fsdp > 1 and size >= MIN_SIZE and any(n % fsdp == 0 for n in shape)
    return size // fsdp if split else size
  return sum(per_chip(s) for s in shapes)


@pytest.mark.parametrize("fsdp", [1, 4])
def test_argument_bytes_are_the_state(plans, fsdp):
  shapes = _param_shapes(_config(fsdp))
  # params, EMA and Adam's two moments, float32 (4 copies x 4 bytes), on each chip; the rest
  # is this chip's quarter of the batch (16 x 128 floats and labels), a few scalars (step,
  # stage, counters, the key) and the stage's args, all padded to TPU tiles.
  state = 4 * 4 * _elements_per_chip(shapes, fsdp)
  row = plans[fsdp]
  assert row["chips"] == CHIPS and row["fsdp"] == fsdp and row["device_batch"] == 4
  assert row["params_count"] == sum(int(np.prod(s)) for s in shapes)
  assert state < row["argument_bytes"] <= state + PADDING, (row["argument_bytes"], state)
  assert row["fits"] and row["peak_bytes"] >= row["argument_bytes"]
  assert row["flops"] > 0 and row["roofline_s"] > 0
  assert row["collectives"]               # gradients are summed over the chips


def test_fsdp_4_cuts_the_state_bytes_by_three_quarters_of_the_kernels(plans):
  shapes = _param_shapes(_config())
  kernels = sum(int(np.prod(s)) for s in shapes if len(s) == 2)
  assert _elements_per_chip(shapes, 1) - _elements_per_chip(shapes, 4) == kernels * 3 // 4
  assert plans[1]["argument_bytes"] - plans[4]["argument_bytes"] == 4 * 4 * kernels * 3 // 4


def test_the_table_is_written(tmp_path):
  row = plan_run(_config(), str(tmp_path), report=lambda _: None)
  saved = json.loads((tmp_path / "plan_train.json").read_text())
  assert saved["argument_bytes"] == row["argument_bytes"]
  assert "| peak vs HBM per chip |" in (tmp_path / "plan_train.md").read_text()


def test_sampling_program_and_a_data_free_method(tmp_path):
  lines = []
  sample = plan_run(_config(program="sample"), str(tmp_path / "sample"), report=lines.append)
  assert "compiling the sample program" in "\n".join(lines)
  assert sample["global_batch"] == 8 and sample["flops"] > 0
  # BOOT trains on the example counter alone; its teacher's shapes come from the config.
  boot = boot_config(tiny_teacher_config(), "2,4", steps_per_stage=3, lr=1e-3,
                     fidelity_samples=8)
  boot.plan.update(topology="v5e:2x2")
  row = plan_run(boot, str(tmp_path / "boot"), report=lambda _: None)
  assert row["frozen_count"] == row["params_count"] > 0


def test_remat_is_planned_and_recomputes(tmp_path):
  """A one-level UNet with model.remat off and on: the table and its json say which; with remat
  the compiled step recomputes the residual blocks' forward (more FLOPs) and holds no more
  temporaries (measured: 0 bytes either way at this size, compiled in ~15 s each; a ch=128
  32x32 UNet's fall from 147 to 81 MiB, but it compiles for minutes). A plan that does not fit
  without remat suggests it."""
  rows, configs = {}, {}
  for remat in (False, True):
    config = tiny_teacher_config()
    config.model = base_config().model   # the digits UNet, then narrower and one level
    config.model.update(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), remat=remat)
    config.plan.update(topology="v5e:2x2")
    configs[remat] = config
    rows[remat] = plan_run(config, str(tmp_path / str(remat)), report=lambda _: None)
    saved = json.loads((tmp_path / str(remat) / "plan_train.json").read_text())
    table = (tmp_path / str(remat) / "plan_train.md").read_text()
    assert saved["remat"] is remat
    assert f"| activation remat (model.remat) | {'on' if remat else 'off'} |" in table
  assert rows[True]["params_count"] == rows[False]["params_count"]
  assert rows[True]["flops"] > rows[False]["flops"]
  assert rows[True]["temp_bytes"] <= rows[False]["temp_bytes"]
  suggests = lambda remat: "--config.model.remat=True" in does_not_fit_message(rows[remat],
                                                                              configs[remat])
  assert suggests(False) and not suggests(True)


def test_a_plan_that_does_not_fit_names_what_to_change(tmp_path, monkeypatch):
  small = topology.Chip("v5e", 197e12, 1e4, 819e9)     # 10 kB of HBM
  monkeypatch.setitem(topology.CHIPS, "TPU v5 lite", small)
  with pytest.raises(DoesNotFit, match=r"does not fit v5e:2x2.*--config.mesh.fsdp \(now 1\).*"
                                       r"--config.batch_size \(now 16"):
    plan_run(_config(), str(tmp_path), report=lambda _: None)


def test_without_libtpu_it_says_how_to_install_it(tmp_path, monkeypatch):
  real = topology.importlib.util.find_spec
  monkeypatch.setattr(topology.importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))
  with pytest.raises(topology.NoLibtpuError, match=r"pip install libtpu==0\.0\.42\.1"):
    plan_run(_config(), str(tmp_path), report=lambda _: None)


def test_the_teacher_shapes_come_from_its_workdir(tmp_path, monkeypatch):
  """With a trained teacher in teacher.workdir its checkpoint gives the shapes (the config's
  route is closed here); the state's bytes come without compiling."""
  from infra.mesh import make_mesh
  from tests.pod_configs import tiny_distill
  from training.method import Method
  from training.trainer import Trainer
  Trainer(tiny_teacher_config(num_train_steps=1), str(tmp_path / "teacher"), make_mesh(1)).run()
  config = tiny_distill()
  config.teacher.workdir = str(tmp_path / "teacher")
  config.plan.update(topology="v5e:2x2", compile=False)
  monkeypatch.setattr(Method, "teacher_shapes", lambda self: pytest.fail("read the config"))
  row = plan_run(config, str(tmp_path / "plan"), report=lambda _: None)
  count = sum(int(np.prod(s)) for s in _param_shapes(tiny_teacher_config()))
  assert row["frozen_count"] == row["params_count"] == count
  assert row["frozen_device_bytes"] == 4 * count and "peak_bytes" not in row
