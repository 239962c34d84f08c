"""Training methods; importing this package registers them (see training.method)."""
from distillation import denoising_student, encoder, guided, progressive, teacher  # noqa: F401
