"""The bundled testbed as a real ComfyUI MODEL, built in-process with ComfyUI's own classes.

Used by the host tier (through the test-only node pack in tests/host/testnodes) and by the
benchmark's ComfyUI rows (``nodes/host_bench.py``). It registers no node. The model is an EPS model
on Stable Diffusion's discrete schedule (ComfyUI's beta_schedule "linear" = diffusers'
"scaled_linear", 0.00085..0.012), whose latent space is the testbed autoencoder's (scale 1, no
shift), so its x0 equals ``testbed.trained.load().denoiser``. Its network call goes through
ComfyUI's DIFFUSION_MODEL wrappers like the UNets of ComfyUI's own models, so EasyCache works on it.
"""

from __future__ import annotations

import copy
import importlib
import os
import threading

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models_base

NUM_CLASSES = 10
NULL_CLASS = 10  # index of the null / unconditional class in the one-hot context
CONTEXT_DIM = NUM_CLASSES + 1

_lock = threading.Lock()
_testbed = None


def testbed():
    """The trained testbed (loaded once per process, outside inference mode)."""
    global _testbed
    with _lock:
        if _testbed is None:
            name = os.environ.get("TEMPO_TESTBED_MODULE") or f"{__package__.rsplit('.', 1)[0]}.testbed.trained"
            module = importlib.import_module(name)
            with torch.inference_mode(False):
                tb = module.load()
            tb.net.eval()
            _testbed = tb
        return _testbed


class TestbedLatentFormat(comfy.latent_formats.LatentFormat):
    """The testbed autoencoder's latent: raw space = model space (scale 1, no shift)."""

    scale_factor = 1.0
    latent_channels = 4
    latent_dimensions = 2


class TestbedConfig(comfy.supported_models_base.BASE):
    """A model config that matches no checkpoint; used directly, never detected."""

    unet_config = {}
    unet_extra_config = {}
    latent_format = TestbedLatentFormat
    sampling_settings = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}
    supported_inference_dtypes = [torch.float32]
    memory_usage_factor = 1.0

    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.EPS

    def inpaint_model(self):
        return False


class TestbedUNet(torch.nn.Module):
    """ComfyUI's ``unet_model``: BaseModel builds it from the config; it holds the testbed net.

    ComfyUI calls ``forward(xc, t, context=..., control=..., transformer_options=...)`` with
    xc = x / sqrt(1 + sigma^2) and t the nearest discrete timestep, and takes the output as eps.
    """

    def __init__(self, dtype=None, device=None, operations=None, **unet_config):
        super().__init__()
        with torch.inference_mode(False):
            self.net = copy.deepcopy(testbed().net)
        self.net.eval()
        self.dtype = torch.float32 if dtype is None else dtype
        if device is not None:
            self.net.to(device)

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward,
            self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options),
        ).execute(x, timesteps, context, y, control, transformer_options, **kwargs)

    def _forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        return self.net(x, timesteps, context=context)


def build_model() -> comfy.model_patcher.ModelPatcher:
    """The testbed as a ComfyUI MODEL (a fresh BaseModel + ModelPatcher each call)."""
    tb = testbed()
    config = TestbedConfig({"in_channels": int(tb.latent_shape[0]), "out_channels": int(tb.latent_shape[0])})
    config.latent_format.latent_channels = int(tb.latent_shape[0])
    config.set_inference_dtype(torch.float32, None)
    base = comfy.model_base.BaseModel(
        config, model_type=comfy.model_base.ModelType.EPS, device=mm.unet_offload_device(), unet_model=TestbedUNet
    )
    base.eval()
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def class_cond(class_id: int) -> torch.Tensor:
    """One-hot class context [1, 1, 11]; 10 is the null class."""
    if not 0 <= class_id <= NULL_CLASS:
        raise ValueError(f"class_id: expected 0..{NULL_CLASS}, got {class_id}")
    cond = torch.zeros(1, 1, CONTEXT_DIM)
    cond[0, 0, class_id] = 1.0
    return cond
