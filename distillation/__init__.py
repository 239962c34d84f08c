"""Training methods; importing this package registers them (see training.method)."""
from distillation import teacher  # noqa: F401
