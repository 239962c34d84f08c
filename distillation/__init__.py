"""Training methods; importing this package registers them (see training.method)."""
from distillation import boot, denoising_student, encoder, guided, progressive, teacher  # noqa: F401
