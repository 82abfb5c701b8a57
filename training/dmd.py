"""Distribution Matching Distillation (DMD, Yin et al., CVPR 2024; DMD2, Yin et al., NeurIPS 2024):
the public entry point of the training core, plain PyTorch (no ComfyUI import).

It re-exports three modules, split as the official DMD2 code splits its guidance module
(tianweiy/DMD2, main/edm/edm_guidance.py) from its trainer (main/edm/train_edm.py):

* ``training.config``: ``DMDConfig`` (the settings of one run) and ``DMDConfigError``;
* ``training.guidance``: the noise schedule (``NoiseSchedule``), classifier-free guidance, the
  DM gradient and the losses (``dm_loss``, ``fake_loss``, ``gan_logits``, ``regression_loss``),
  the one-step generator and the teacher ODE pairs;
* ``training.trainer``: ``DMDTrainer``, the training loop with its optimizers, EMA, GAN head and
  its state.

The resumable run around a trainer (checkpoint files, resume, the generator file) is ``training.run``.
"""

from .batching import default_collate
from .config import FAKE_WEIGHTINGS, MODEL_TYPES, REGRESSION_LOSSES, DMDConfig, DMDConfigError
from .guidance import (
    NoiseSchedule,
    OneStepGenerator,
    RegressionPairs,
    cfg_denoise,
    copy_teacher,
    dm_gradient,
    dm_loss,
    dm_surrogate_loss,
    edm_sigmas,
    fake_loss,
    flow_table,
    gan_logits,
    regression_loss,
    teacher_ode_samples,
    wide_dtype,
)
from .lr import constant_with_warmup
from .trainer import DMDTrainer

__all__ = [
    "DMDConfig",
    "DMDConfigError",
    "DMDTrainer",
    "FAKE_WEIGHTINGS",
    "MODEL_TYPES",
    "NoiseSchedule",
    "OneStepGenerator",
    "REGRESSION_LOSSES",
    "RegressionPairs",
    "cfg_denoise",
    "constant_with_warmup",
    "copy_teacher",
    "default_collate",
    "dm_gradient",
    "dm_loss",
    "dm_surrogate_loss",
    "edm_sigmas",
    "fake_loss",
    "flow_table",
    "gan_logits",
    "regression_loss",
    "teacher_ode_samples",
    "wide_dtype",
]
