"""tempo_testnodes: a test-only ComfyUI node pack (V3) around the pack's trained testbed.

The host tests link this folder into ComfyUI's custom_nodes as ``tempo_testnodes``. It turns the
testbed (``comfyui_tempo.testbed.trained``: a small class-conditional eps UNet and its autoencoder)
into real ComfyUI objects, built in-process with ComfyUI's own classes by the pack's
``comfyui_tempo.harness.comfy_testbed`` (lab code the pack never imports):

* ``TempoTestbedModel`` -> MODEL: a ``comfy.model_base.BaseModel`` (EPS, discrete SD schedule:
  ComfyUI's beta_schedule "linear" = diffusers' "scaled_linear", 0.00085..0.012) in a
  ``comfy.model_patcher.ModelPatcher``; its x0 equals ``testbed.denoiser(x, sigma, cond)``.
* ``TempoTestbedClass`` -> CONDITIONING ``[[one-hot [1, 1, 11], {}]]`` (class 10 = null).
* ``TempoTestbedDecode`` LATENT -> IMAGE through the testbed autoencoder.
* ``TempoTestbedEmptyLatent`` -> LATENT of zeros at the testbed latent shape (or a given size).
* ``TempoTestbedVAE`` -> VAE: the testbed autoencoder as a ``comfy.sd.VAE`` (``TestbedVAE``).

``name`` inputs pick "testbed" (default) or "hr" (the second testbed in its own latent space).

Snippets (``comfy_snippet`` fixture) can ``import tempo_testnodes`` and call ``build_model()``,
``class_cond()``, ``testbed()`` and ``tiny_sd_model()`` (a tiny random SD-style UNet) directly, with
``tiny_sd_conditioning()`` and ``skip_settings()`` (the AdaptiveDiffusion nodes' defaults) for the latter.

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

# The model, the conditioning and the testbed loader live in the pack's harness/ (its benchmark uses them too);
# this pack only exposes them as nodes. Imported as `comfyui_tempo`, a second copy of the pack's
# modules next to the one ComfyUI loaded under its path name: nothing here shares state with it.
from comfyui_tempo.harness.comfy_testbed import (  # noqa: F401  (re-exported for snippets)
    CONTEXT_DIM,
    MODEL_NAMES,
    NULL_CLASS,
    NUM_CLASSES,
    TestbedConfig,
    TestbedLatentFormat,
    TestbedUNet,
    TestbedVAE,
    build_model,
    build_vae,
    class_cond,
    testbed,
)


def tiny_sd_model(
    model_type=None, *, middle: bool = False, shift: float | None = None, scale: float = 0.05, seed: int = 0
):
    """A tiny SD-style UNet (one level, 32 channels, context 64, SD1.5 latent format) with random weights
    N(0, scale) as a MODEL, for snippets that need ComfyUI's own UNet code with eps, v or flow sampling.
    middle: with a middle block (ResBlock, SpatialTransformer, ResBlock); shift: the flow shift of the
    model sampling. The weights are written under no_grad (inference tensors inside inference mode, as a
    model loaded by a node)."""
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models_base as smb

    class Tiny(smb.BASE):
        unet_config = {}
        unet_extra_config = {"num_heads": 2, "num_head_channels": -1}
        latent_format = comfy.latent_formats.SD15
        sampling_settings = {"shift": shift} if shift is not None else {}

    cfg = Tiny(
        dict(
            image_size=32,
            in_channels=4,
            out_channels=4,
            model_channels=32,
            num_res_blocks=[1],
            channel_mult=[1],
            transformer_depth=[1],
            transformer_depth_output=[0, 0],
            transformer_depth_middle=1 if middle else -2,
            use_spatial_transformer=True,
            legacy=False,
            context_dim=64,
            use_linear_in_transformer=True,
            adm_in_channels=None,
        )
    )
    cfg.set_inference_dtype(torch.float32, None)
    base = comfy.model_base.BaseModel(cfg, model_type=model_type or comfy.model_base.ModelType.EPS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in base.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return comfy.model_patcher.ModelPatcher(
        base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def tiny_sd_conditioning(batch: int = 2):
    """(positive, negative, latent) for ``tiny_sd_model``: a seeded context [1, 2, 64], a zero one, and an empty
    LATENT of ``batch`` 8x8 SD latents (ComfyUI's CONDITIONING / LATENT forms)."""
    pos = [[torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(1)), {}]]
    neg = [[torch.zeros(1, 2, 64), {}]]
    return pos, neg, {"samples": torch.zeros(batch, 4, 8, 8)}


def skip_settings(**changes) -> dict:
    """The AdaptiveDiffusion nodes' skip settings at their defaults (target speed-up 2, extrapolation auto), as keyword
    arguments of their ``execute``; ``changes`` replace some."""
    return {
        **dict(
            mode="target_speedup",
            target_speedup=2.0,
            threshold=0.01,
            max_skip=4,
            extrapolation="auto",
            force_last=0,
            start_percent=0.0,
            estimator_space="vp",
            batch_mode="per_sample",
        ),
        **changes,
    }


class TempoTestbedModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TempoTestbedModel",
            display_name="Tempo Testbed Model (test)",
            category="tempo/testing",
            description="The pack's trained testbed denoiser as a ComfyUI MODEL (eps, SD discrete schedule).",
            inputs=[
                io.Combo.Input(
                    "name",
                    options=list(MODEL_NAMES),
                    default="testbed",
                    optional=True,
                    tooltip="testbed: the 32 px model (4x8x8 latents); hr: the second testbed in its own "
                    "latent space (32 / 64 px).",
                )
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
            inputs=[
                io.Combo.Input(
                    "name", options=list(MODEL_NAMES), default="testbed", tooltip="Which testbed's autoencoder."
                )
            ],
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
                io.Combo.Input(
                    "name",
                    options=list(MODEL_NAMES),
                    default="testbed",
                    optional=True,
                    tooltip="Which testbed's latent space.",
                ),
                io.Int.Input(
                    "width",
                    default=0,
                    min=0,
                    max=1024,
                    step=8,
                    optional=True,
                    tooltip="Image width in pixels; 0: the testbed's own size.",
                ),
                io.Int.Input(
                    "height",
                    default=0,
                    min=0,
                    max=1024,
                    step=8,
                    optional=True,
                    tooltip="Image height in pixels; 0: the testbed's own size.",
                ),
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
