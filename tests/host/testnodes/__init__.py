"""tempo_testnodes: a test-only ComfyUI node pack (V3) around the pack's trained testbed.

The host tests link this folder into ComfyUI's custom_nodes as ``tempo_testnodes``. It turns the
testbed (``comfyui_tempo.testbed.trained``: a small class-conditional eps UNet and its autoencoder)
into real ComfyUI objects, built in-process with ComfyUI's own classes by the pack's
``comfyui_tempo.nodes.testbed_model``:

* ``TempoTestbedModel`` -> MODEL: a ``comfy.model_base.BaseModel`` (EPS, discrete SD schedule:
  ComfyUI's beta_schedule "linear" = diffusers' "scaled_linear", 0.00085..0.012) in a
  ``comfy.model_patcher.ModelPatcher``; its x0 equals ``testbed.denoiser(x, sigma, cond)``.
* ``TempoTestbedClass`` -> CONDITIONING ``[[one-hot [1, 1, 11], {}]]`` (class 10 = null).
* ``TempoTestbedDecode`` LATENT -> IMAGE through the testbed autoencoder.
* ``TempoTestbedEmptyLatent`` -> LATENT of zeros at the testbed latent shape (or a given size).
* ``TempoTestbedVAE`` -> VAE: the testbed autoencoder as a ``comfy.sd.VAE`` (``TestbedVAE``).

``name`` inputs pick "testbed" (default) or "hr" (the second testbed in its own latent space).

Snippets (``comfy_snippet`` fixture) can ``import tempo_testnodes`` and call ``build_model()``,
``class_cond()``, ``testbed()`` directly.

``TEMPO_TESTBED_MODULE`` (test-only) names another module with the ``trained.load()`` interface.
"""

from __future__ import annotations

import os
import sys

import torch

try:
    import comfyui_tempo  # noqa: F401  (BASE/custom_nodes is on PYTHONPATH in the host tests)
except ImportError:  # linked into a ComfyUI by hand: the pack is our sibling in custom_nodes
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from comfy_api.latest import ComfyExtension, io

# The model, the conditioning and the testbed loader live in the pack (its benchmark uses them too);
# this pack only exposes them as nodes. Imported as `comfyui_tempo`, a second copy of the pack's
# modules next to the one ComfyUI loaded under its path name: nothing here shares state with it.
from comfyui_tempo.nodes.testbed_model import (  # noqa: F401  (re-exported for snippets)
    CONTEXT_DIM,
    NULL_CLASS,
    NUM_CLASSES,
    MODEL_NAMES,
    TestbedConfig,
    TestbedLatentFormat,
    TestbedUNet,
    TestbedVAE,
    build_model,
    build_vae,
    class_cond,
    testbed,
)


class TempoTestbedModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TempoTestbedModel",
            display_name="Tempo Testbed Model (test)",
            category="tempo/testing",
            description="The pack's trained testbed denoiser as a ComfyUI MODEL (eps, SD discrete schedule).",
            inputs=[
                io.Combo.Input("name", options=list(MODEL_NAMES), default="testbed", optional=True,
                               tooltip="testbed: the 32 px model (4x8x8 latents); hr: the second testbed in its own "
                               "latent space (32 / 64 px)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, name="testbed") -> io.NodeOutput:
        return io.NodeOutput(build_model(name))


class TempoTestbedVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TempoTestbedVAE",
            display_name="Tempo Testbed VAE (test)",
            category="tempo/testing",
            description="The testbed's autoencoder as a ComfyUI VAE (VAEDecode, VAEEncode and the bridge nodes take it).",
            inputs=[io.Combo.Input("name", options=list(MODEL_NAMES), default="testbed",
                                   tooltip="Which testbed's autoencoder.")],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def execute(cls, name="testbed") -> io.NodeOutput:
        return io.NodeOutput(build_vae(name))


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
            inputs=[
                io.Int.Input("batch_size", default=1, min=1, max=4096),
                io.Combo.Input("name", options=list(MODEL_NAMES), default="testbed", optional=True,
                               tooltip="Which testbed's latent space."),
                io.Int.Input("width", default=0, min=0, max=1024, step=8, optional=True,
                             tooltip="Image width in pixels; 0: the testbed's own size."),
                io.Int.Input("height", default=0, min=0, max=1024, step=8, optional=True,
                             tooltip="Image height in pixels; 0: the testbed's own size."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, batch_size, name="testbed", width=0, height=0) -> io.NodeOutput:
        tb = testbed(name)
        c, h, w = (int(v) for v in tb.latent_shape)
        f = int(tb.image_size) // w
        if width:
            w = int(width) // f
        if height:
            h = int(height) // f
        return io.NodeOutput({"samples": torch.zeros(int(batch_size), c, h, w)})


NODES = [TempoTestbedModel, TempoTestbedClass, TempoTestbedDecode, TempoTestbedEmptyLatent, TempoTestbedVAE]


class TempoTestNodes(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> TempoTestNodes:
    return TempoTestNodes()
