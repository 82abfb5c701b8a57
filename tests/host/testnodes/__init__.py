"""tempo_testnodes: a test-only ComfyUI node pack (V3) around the pack's trained testbed.

The host tests link this folder into ComfyUI's custom_nodes as ``tempo_testnodes``. It turns the
testbed (``comfyui_tempo.testbed.trained``: a small class-conditional eps UNet and its autoencoder)
into real ComfyUI objects, built in-process with ComfyUI's own classes:

* ``TempoTestbedModel`` -> MODEL: a ``comfy.model_base.BaseModel`` (EPS, discrete SD schedule:
  ComfyUI's beta_schedule "linear" = diffusers' "scaled_linear", 0.00085..0.012) in a
  ``comfy.model_patcher.ModelPatcher``; its x0 equals ``testbed.denoiser(x, sigma, cond)``.
* ``TempoTestbedClass`` -> CONDITIONING ``[[one-hot [1, 1, 11], {}]]`` (class 10 = null).
* ``TempoTestbedDecode`` LATENT -> IMAGE through the testbed autoencoder.
* ``TempoTestbedEmptyLatent`` -> LATENT of zeros at the testbed latent shape.

Snippets (``comfy_snippet`` fixture) can ``import tempo_testnodes`` and call ``build_model()``,
``class_cond()``, ``testbed()`` directly.

``TEMPO_TESTBED_MODULE`` (test-only) names another module with the ``trained.load()`` interface.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
import threading

import torch

try:
    import comfyui_tempo  # noqa: F401  (BASE/custom_nodes is on PYTHONPATH in the host tests)
except ImportError:  # linked into a ComfyUI by hand: the pack is our sibling in custom_nodes
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models_base
from comfy_api.latest import ComfyExtension, io

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
            name = os.environ.get("TEMPO_TESTBED_MODULE") or "comfyui_tempo.testbed.trained"
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
    # ComfyUI's "linear" schedule is linspace(sqrt(start), sqrt(end))**2, i.e. SD's scaled_linear.
    sampling_settings = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}
    supported_inference_dtypes = [torch.float32]
    memory_usage_factor = 1.0

    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.EPS

    def inpaint_model(self):
        return False


class TestbedUNet(torch.nn.Module):
    """ComfyUI's ``unet_model``: built by BaseModel from the config, holds the testbed net.

    ComfyUI calls ``forward(xc, t, context=..., control=..., transformer_options=...)`` with
    xc = x / sqrt(1 + sigma^2) and t = the nearest discrete timestep (float), and takes the
    output as eps.
    """

    def __init__(self, dtype=None, device=None, operations=None, **unet_config):
        super().__init__()
        with torch.inference_mode(False):
            self.net = copy.deepcopy(testbed().net)
        self.net.eval()
        self.dtype = torch.float32 if dtype is None else dtype
        if device is not None:
            self.net.to(device)

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, **kwargs):
        return self.net(x, timesteps, context=context)


def build_model() -> comfy.model_patcher.ModelPatcher:
    """The testbed as a ComfyUI MODEL (a fresh BaseModel + ModelPatcher each call)."""
    tb = testbed()
    config = TestbedConfig({"in_channels": int(tb.latent_shape[0]), "out_channels": int(tb.latent_shape[0])})
    config.latent_format.latent_channels = int(tb.latent_shape[0])
    config.set_inference_dtype(torch.float32, None)
    base = comfy.model_base.BaseModel(
        config,
        model_type=comfy.model_base.ModelType.EPS,
        device=mm.unet_offload_device(),
        unet_model=TestbedUNet,
    )
    base.eval()
    return comfy.model_patcher.ModelPatcher(
        base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def class_cond(class_id: int) -> torch.Tensor:
    """One-hot class context [1, 1, 11]; 10 is the null class."""
    if not 0 <= class_id <= NULL_CLASS:
        raise ValueError(f"class must be in 0..{NULL_CLASS}, got {class_id}")
    cond = torch.zeros(1, 1, CONTEXT_DIM)
    cond[0, 0, class_id] = 1.0
    return cond


class TempoTestbedModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TempoTestbedModel",
            display_name="Tempo Testbed Model (test)",
            category="tempo/testing",
            description="The pack's trained testbed denoiser as a ComfyUI MODEL (eps, SD discrete schedule).",
            inputs=[],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(build_model())


class TempoTestbedClass(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TempoTestbedClass",
            display_name="Tempo Testbed Class (test)",
            category="tempo/testing",
            description="Class conditioning for the testbed: 0..9 a digit, 10 the null class (negative).",
            inputs=[io.Int.Input("class_id", default=0, min=0, max=NULL_CLASS)],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, class_id) -> io.NodeOutput:
        return io.NodeOutput([[class_cond(int(class_id)), {}]])


class TempoTestbedDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TempoTestbedDecode",
            display_name="Tempo Testbed Decode (test)",
            category="tempo/testing",
            description="Decode testbed latents (raw space) to an IMAGE with the testbed autoencoder.",
            inputs=[io.Latent.Input("samples")],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, samples) -> io.NodeOutput:
        tb = testbed()
        lat = samples["samples"].to(torch.float32)
        with torch.no_grad():
            img = tb.decode(lat)
        img = img.float().clamp(0, 1).permute(0, 2, 3, 1).contiguous().cpu()
        return io.NodeOutput(img)


class TempoTestbedEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TempoTestbedEmptyLatent",
            display_name="Tempo Testbed Empty Latent (test)",
            category="tempo/testing",
            description="A batch of zero latents at the testbed latent shape.",
            inputs=[io.Int.Input("batch_size", default=1, min=1, max=4096)],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, batch_size) -> io.NodeOutput:
        c, h, w = (int(v) for v in testbed().latent_shape)
        return io.NodeOutput({"samples": torch.zeros(int(batch_size), c, h, w)})


NODES = [TempoTestbedModel, TempoTestbedClass, TempoTestbedDecode, TempoTestbedEmptyLatent]


class TempoTestNodes(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> TempoTestNodes:
    return TempoTestNodes()
