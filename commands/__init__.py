"""The commands behind main.py's modes (`--mode=pipeline|sample|eval|pairs|plan`; `train` is
training.trainer.train): the top floor, the only package that imports both the methods and
evaluation. Importing it fills the method registry (training.method) with every method of
`distillation`.

The floors, each importing only those below it (tests/test_layers.py checks it):
  commands/                      the modes
  distillation/                  the methods (each a training.method.Method)
  eval/                          metrics, generating samples, the report (methods by name only)
  training/                      the Method interface and registry, trainer, optimizer, state,
                                 offline data, drawing a config's samples, programs as shapes
  infra/                         mesh and shardings, checkpoints and loading params, files,
                                 data sources, image grids and npz trees, TPU topologies,
                                 compiled-program stats
  sampling/                      samplers, guidance, clipping
  diffusion/                     the math core and networks
"""
import distillation  # noqa: F401  (registers the methods)
