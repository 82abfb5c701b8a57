"""The bundled testbed as a real ComfyUI MODEL, built in-process with ComfyUI's own classes.

Used by the host tier (through the test-only node pack in tests/host/testnodes) and by the
benchmark's ComfyUI rows (``harness/host_bench.py``). It registers no node and the pack never
imports it. The model is an EPS model on Stable Diffusion's discrete schedule (ComfyUI's
beta_schedule "linear" = diffusers' "scaled_linear", 0.00085..0.012), whose latent space is the
testbed autoencoder's (scale 1, no shift), so its x0 equals ``testbed.trained.load().denoiser``. Its
network call goes through ComfyUI's DIFFUSION_MODEL wrappers like the UNets of ComfyUI's own models,
so EasyCache works on it.

The benchmark's ComfyUI grid also builds the other testbeds (``GRID_MODELS``): the pixel-space UNets
(``testbed/trained_vpred.py``: V_PREDICTION or EPS on the same discrete schedule, ``vpred_zsnr`` and ``shapes_zsnr``
on it rescaled to zero terminal SNR; ``digits_flow`` FLOW at shift 8; ``sd_latent`` / ``sdxl_latent`` EPS and
``sd3_flow`` / ``flux_flow`` FLOW at shift 3 / e^1.15 in the real TAESDs' 4- / 16-channel latents) and the flow DiT (``testbed/trained_flow.py``,
FLOW at shift 3), each with ComfyUI's own model sampling for its type, in a latent format of scale 1 with the
testbed's channels (pixels in [-1, 1], or the TAESD's model-space latents).
"""

from __future__ import annotations

import copy
import functools
import importlib
import os
import threading

import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sd
import comfy.supported_models_base
import torch

NUM_CLASSES = 10
NULL_CLASS = 10  # index of the null / unconditional class in the one-hot context
CONTEXT_DIM = NUM_CLASSES + 1

_lock = threading.Lock()
_testbeds: dict = {}

MODEL_NAMES = ("testbed", "hr")  # "hr": the second testbed in its own latent space (multi-resolution)
# every testbed a MODEL can be built from: name -> (ComfyUI model type, the loader's module, its `model` argument)
GRID_MODELS = {
    "testbed": ("EPS", "trained", None),
    "hr": ("EPS", "trained", "hr"),
    "vpred": ("V_PREDICTION", "trained_vpred", "vpred"),
    "shapes_eps": ("EPS", "trained_vpred", "shapes_eps"),
    "shapes_v": ("V_PREDICTION", "trained_vpred", "shapes_v"),
    "digits_flow": ("FLOW", "trained_vpred", "digits_flow"),
    "vpred_zsnr": ("V_PREDICTION", "trained_vpred", "vpred_zsnr"),
    "shapes_zsnr": ("V_PREDICTION", "trained_vpred", "shapes_zsnr"),
    "sd_latent": ("EPS", "trained_vpred", "sd_latent"),
    "sdxl_latent": ("EPS", "trained_vpred", "sdxl_latent"),
    "sd3_flow": ("FLOW", "trained_vpred", "sd3_flow"),
    "flux_flow": ("FLOW", "trained_vpred", "flux_flow"),
    "flow": ("FLOW", "trained_flow", None),
}


def testbed(name: str = "testbed"):
    """The trained testbed `name` (loaded once per process, outside inference mode); "testbed" is
    ``trained.load()``, "hr" ``trained.load(name="hr")``, the others of ``GRID_MODELS`` their module's ``load``."""
    if name not in GRID_MODELS:
        raise ValueError(f"name: expected one of {', '.join(GRID_MODELS)}, got {name!r}")
    with _lock:
        if name not in _testbeds:
            _, loader, arg = GRID_MODELS[name]
            pkg = __package__.rsplit(".", 1)[0]
            mod = (os.environ.get("TEMPO_TESTBED_MODULE") if loader == "trained" else None) or f"{pkg}.testbed.{loader}"
            module = importlib.import_module(mod)
            with torch.inference_mode(False):
                if arg is None:
                    tb = module.load()
                else:
                    tb = module.load(name=arg) if loader == "trained" else module.load(model=arg)
            tb.net.eval()
            _testbeds[name] = tb
        return _testbeds[name]


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

    def __init__(self, dtype=None, device=None, operations=None, testbed_name="testbed", **unet_config):
        super().__init__()
        with torch.inference_mode(False):
            self.net = copy.deepcopy(testbed(testbed_name).net)
        self.net.eval()
        self.class_input = testbed_name == "flow"  # the DiT takes the class index y, not a one-hot context
        self.dtype = torch.float32 if dtype is None else dtype
        if device is not None:
            self.net.to(device)

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward,
            self,
            comfy.patcher_extension.get_all_wrappers(
                comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options
            ),
        ).execute(x, timesteps, context, y, control, transformer_options, **kwargs)

    def _forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        if self.class_input:  # the one-hot context's class (the null class for the negative)
            return self.net(x, timesteps, context[:, 0].argmax(-1))
        return self.net(x, timesteps, context=context)


def _latent_format(channels: int):
    return type(f"TestbedLatentFormat{channels}", (TestbedLatentFormat,), {"latent_channels": int(channels)})


def _config_class(name: str, channels: int):
    if name == "testbed" and channels == TestbedLatentFormat.latent_channels:
        return TestbedConfig
    return type(f"TestbedConfig_{name}", (TestbedConfig,), {"latent_format": _latent_format(channels)})


def build_model(name: str = "testbed") -> comfy.model_patcher.ModelPatcher:
    """The testbed `name` (one of ``GRID_MODELS``) as a ComfyUI MODEL (a fresh BaseModel + ModelPatcher each
    call), with ComfyUI's model sampling for its type (a flow model's shift and multiplier its own)."""
    tb = testbed(name)
    channels = int(tb.latent_shape[0])
    model_type = getattr(comfy.model_base.ModelType, GRID_MODELS[name][0])
    config_class = _config_class(name, channels)
    if model_type == comfy.model_base.ModelType.FLOW:
        flow = {"shift": float(tb.sampling.shift), "multiplier": float(tb.sampling.multiplier)}
        config_class = type(f"{config_class.__name__}_flow", (config_class,), {"sampling_settings": flow})
    elif getattr(tb, "zsnr", False):  # ModelSamplingDiscrete(zsnr=True), as ComfyUI reads it off a model config
        zsnr = {**TestbedConfig.sampling_settings, "zsnr": True}
        config_class = type(f"{config_class.__name__}_zsnr", (config_class,), {"sampling_settings": zsnr})
    config = config_class({"in_channels": channels, "out_channels": channels})
    config.set_inference_dtype(torch.float32, None)
    unet = TestbedUNet if name == "testbed" else functools.partial(TestbedUNet, testbed_name=name)
    base = comfy.model_base.BaseModel(config, model_type=model_type, device=mm.unet_offload_device(), unet_model=unet)
    base.eval()
    return comfy.model_patcher.ModelPatcher(
        base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


class _TestbedAE(torch.nn.Module):
    """The testbed autoencoder as a VAE's first_stage_model: encode(images 0..1) -> latents,
    decode(latents) -> images 0..1 (the VAE's process_input / process_output are identities)."""

    def __init__(self, ae):
        super().__init__()
        self.ae = ae

    def encode(self, x):
        return self.ae.encode(x.float())

    def decode(self, z):
        return self.ae.decode(z.float())


class TestbedVAE(comfy.sd.VAE):
    """The testbed `name`'s autoencoder as a ComfyUI VAE (what VAEDecode / VAEEncode and the pack's
    bridge nodes take).

    Built through ``comfy.sd.VAE.__init__`` itself, so it has every attribute this ComfyUI's VAE sets
    (``format_encoded`` from 0.28, ``size``, the patcher class it uses, ...): the real constructor runs
    on a TAESD-shaped state dict with the testbed's latent channels (a throw-away TAESD, fresh weights),
    then the testbed's autoencoder replaces that first stage model and the testbed's own geometry
    replaces TAESD's."""

    def __init__(self, name: str = "testbed"):
        import comfy.taesd.taesd

        tb = testbed(name)
        channels = int(tb.latent_shape[0])
        with torch.inference_mode(False):
            stub = {
                k: v.detach().clone() for k, v in comfy.taesd.taesd.TAESD(latent_channels=channels).state_dict().items()
            }
            ae = copy.deepcopy(tb.ae)
        super().__init__(sd=stub, device=mm.vae_device(), dtype=torch.float32)
        ae.eval().requires_grad_(False)
        factor = int(tb.image_size // tb.latent_shape[-1])
        self.testbed_name = name
        self.memory_used_encode = lambda shape, dtype: 64 * shape[2] * shape[3] * 4
        self.memory_used_decode = lambda shape, dtype: 64 * shape[2] * shape[3] * factor * factor * 4
        self.downscale_ratio = factor
        self.upscale_ratio = factor
        self.latent_channels = channels
        self.latent_dim = 2
        self.output_channels = 3
        self.process_input = lambda image: image
        self.process_output = lambda image: torch.clamp(image, min=0.0, max=1.0)
        self.working_dtypes = [torch.float32]
        self.first_stage_model = _TestbedAE(ae).eval()
        self.first_stage_model.to(self.vae_dtype)
        if hasattr(mm, "archive_model_dtypes"):  # ComfyUI >= 0.2x: the real __init__ does this too
            mm.archive_model_dtypes(self.first_stage_model)
        # the same patcher class the real __init__ chose, around the testbed's module
        self.patcher = type(self.patcher)(
            self.first_stage_model, load_device=self.device, offload_device=mm.vae_offload_device()
        )
        if "size" in vars(self):  # ComfyUI >= 0.2x caches the module size
            self.size = None
            self.model_size()


def build_vae(name: str = "testbed") -> TestbedVAE:
    if name not in MODEL_NAMES:
        raise ValueError(
            f"name: only {', '.join(MODEL_NAMES)} have an autoencoder (the others sample pixels); got {name!r}"
        )
    return TestbedVAE(name)


def class_cond(class_id: int) -> torch.Tensor:
    """One-hot class context [1, 1, 11]; 10 is the null class."""
    if not 0 <= class_id <= NULL_CLASS:
        raise ValueError(f"class_id: expected 0..{NULL_CLASS}, got {class_id}")
    cond = torch.zeros(1, 1, CONTEXT_DIM)
    cond[0, 0, class_id] = 1.0
    return cond
