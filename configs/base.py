"""Defaults shared by every experiment; preset files override a few keys.

Every key a run may set exists here, so `--config.some_key=...` with a key that
is not in the config is rejected by ml_collections with the key's name.
"""
import ml_collections

# Image shape (H, W, C) and number of classes of each dataset the project knows.
DATASETS = {
    "digits": ((8, 8, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "imagenet_resized/64x64": ((64, 64, 3), 1000),
}


def base_config(dataset: str = "digits") -> ml_collections.ConfigDict:
  shape, num_classes = DATASETS[dataset]
  c = ml_collections.ConfigDict()
  c.method = "teacher"
  c.seed = 0

  c.data = ml_collections.ConfigDict(dict(
      name=dataset, data_dir="", split="train", random_flip=False, read_threads=2,
      num_workers=0, shape=shape, num_classes=num_classes))

  c.model = ml_collections.ConfigDict(dict(
      name="unet", ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
      num_heads=1, dropout=0.0, num_classes=0, guidance=False, dtype="float32", remat=False))
  # model.dtype: the compute dtype ('bfloat16' on accelerators); parameters, optimizer state
  # and the loss stay float32.
  # model.remat: recompute the residual blocks' activations in the backward pass (less memory,
  # at most one more forward pass of compute); the parameters are the same either way.

  c.diffusion = ml_collections.ConfigDict(dict(
      process="cosine", parameterization="v", weighting="snr+1",
      logsnr_min=-20.0, logsnr_max=20.0, p_uncond=0.1))
  # process='ddpm' (a discrete-time DDPM, e.g. an imported diffusers teacher; --mode=import sets
  # it from the scheduler_config.json): its betas and number of steps T.
  c.diffusion.ddpm = ml_collections.ConfigDict(dict(
      beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000))

  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-3, warmup_steps=100, schedule="constant", grad_clip=1.0,
      b1=0.9, b2=0.99, ema_decay=0.999, ema_rampup=0.05))
  # optim.ema_rampup > 0: the EMA's half-life is at most ema_rampup x the updates of the stage
  # so far (EDM's ramp-up and its 0.05; training/optimizer.py:ema_decay), so a short run's EMA
  # does not keep its initialisation (0.999 ** 2000 = 13.5%); 0 = always ema_decay.

  # The device mesh: fsdp > 1 splits the state's leaves of at least fsdp_min_size elements
  # (parameters, EMA, Adam moments, the frozen teacher) along an 'fsdp' axis of that size
  # (infra/mesh.py); 1 = replicated on every device.
  c.mesh = ml_collections.ConfigDict(dict(fsdp=1, fsdp_min_size=2**14))

  # --mode=plan (commands/plan.py): compile `program` (train: the train step; sample: the
  # sampling program of --mode=sample) for the TPU `topology` (e.g. v5e:4x4, v4:2x2x2,
  # v5p:2x2x1, v6e:2x2) on this machine with libtpu, and print per-chip memory and FLOPs;
  # compile=False: only the state's bytes from its shapes (instant).
  c.plan = ml_collections.ConfigDict(dict(topology="v5e:4x4", program="train", compile=True))

  c.batch_size = 64
  c.num_train_steps = 2000
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  c.sample_every_steps = 500
  c.keep_checkpoints = 3     # the latest ones; the last checkpoint of every stage is kept too
  c.max_nonfinite_in_row = 20
  # Every eval_every_steps (0 = never) the method's held-out loss of the EMA params is logged
  # and the checkpoint saved with it; the one with the lowest is kept besides the latest.
  c.eval_every_steps = 0
  # Offline teacher samples of methods that train on them ('' = <workdir>/pairs; --mode=pairs).
  c.offline_dir = ""

  c.sample = ml_collections.ConfigDict(dict(
      sampler="ddim", num_steps=64, time_grid="uniform", guidance_weight=0.0,
      num_samples=64, batch_size=64, labels="", use_ema=True, checkpoint="best"))
  # Clip x_hat to the data range [-1, 1] at every sampler step (as the reference progressive-
  # distillation code evaluates, `eval_clip_denoised`); distillation targets are never clipped.
  c.sample.clip_x = True
  # --mode=sample of a nested (Matryoshka) model: also write every lower resolution.
  c.sample.all_resolutions = False

  # A distillation's teacher: its workdir, and whether a teacher whose latest checkpoint is
  # short of the end of its schedule may be used (an error by default).
  c.teacher = ml_collections.ConfigDict(dict(workdir="", allow_unfinished=False))

  # --mode=eval (commands/evaluate.py, eval/quality.py): lists are comma-separated;
  # guidance weights apply to class-conditional models; '' dirs = the defaults; the classifier
  # is trained (classifier_steps) when missing; metrics from fd_dataset, fidelity, fid;
  # reference_split: the dataset split whose statistics FD-<dataset> and FID compare against
  # (the training split, as published CIFAR-10 / ImageNet FIDs do); reference_images: its
  # first N images (0 = all; num_samples = the same N on both sides, what CPU-sized FIDs use). checkpoint (here and in
  # `sample`): 'best' (lowest held-out loss, else the latest), 'latest' or a step number.
  # clip_x: every row samples with sample.clip_x = this (whatever the run saved).
  c.eval = ml_collections.ConfigDict(dict(
      samplers="ddim", num_steps="1,2,4,8,16", guidance_weights="0", num_samples=1000,
      batch_size=250, metrics="fd_dataset,fidelity", reference_steps=256, classifier_dir="",
      classifier_steps=500, inception_weights="", seed=0, reference_split="train",
      reference_images=0, checkpoint="best", clip_x=True))
  return c


def select(presets: dict, arg, kind: str):
  """The preset named `arg` (default: the first), or a clear error listing them."""
  name = arg or next(iter(presets))
  if name not in presets:
    raise ValueError(f"Unknown {kind} preset {name!r}; choose one of {sorted(presets)} "
                     f"(e.g. --config=configs/{kind}.py:{next(iter(presets))}).")
  return presets[name]()
