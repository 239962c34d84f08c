"""Training methods; importing this package registers them (see training.method)."""
from distillation import boot, catch_up, catch_up_onestep, consistency, denoising_student, encoder, flow_matching, guided, matryoshka, progressive, sid, teacher  # noqa: F401
