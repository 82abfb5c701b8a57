"""Guards against the next ComfyUI drift: every ComfyUI method the pack overrides or calls with a fixed
signature is compared with ``inspect.signature`` of the running ComfyUI, the pack's overrides must accept
every argument ComfyUI passes, and the feature-detected parts of ``nodes/compat.py`` are checked on the
version at hand (run this tier once per ComfyUI tree: 0.3.64 and 0.33.0)."""

from __future__ import annotations

import pytest

from comfyui_tempo.nodes.registry import NODE_MODULES

SIGNATURE_SNIPPET = r'''
import importlib, inspect
from comfyui_tempo.nodes import compat
import pkgutil
import comfyui_tempo.nodes as pack_nodes

def resolve(path):
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)

res = {"drift": {}, "overrides": {}, "missing": []}
for path, expected in compat.OVERRIDDEN.items():
    try:
        params = list(inspect.signature(resolve(path)).parameters)
    except (ImportError, AttributeError) as e:
        res["missing"].append(f"{path}: {type(e).__name__}: {e}")
        continue
    if params[: len(expected)] != list(expected):
        res["drift"][path] = params

def accepts(override, base):
    """Every parameter of ComfyUI's method can be passed to the override, by position or by name."""
    o = inspect.signature(override).parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in o.values())
    lacking = [n for n, p in inspect.signature(base).parameters.items()
               if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in o and not var_kw]
    return lacking

# every module of the pack's nodes package (ComfyUI loads them all: the node modules and what they import;
# the lab's ComfyUI-side helpers live in harness/, which the pack never imports)
modules = [importlib.import_module(f"comfyui_tempo.nodes.{m.name}") for m in pkgutil.iter_modules(pack_nodes.__path__)]
res["modules"] = sorted(m.__name__.rsplit(".", 1)[1] for m in modules)
for module in modules:
    for cls in vars(module).values():
        if not isinstance(cls, type) or cls.__module__ != module.__name__:
            continue
        for base in cls.__mro__[1:]:
            if not base.__module__.startswith("comfy."):
                continue
            for name, fn in vars(cls).items():
                if callable(fn) and not name.startswith("__") and hasattr(base, name):
                    key = f"{cls.__name__}.{name} over {base.__module__}.{base.__name__}"
                    res["overrides"][key] = accepts(fn, getattr(base, name))
RESULT = res
'''


def test_comfyui_methods_the_pack_relies_on_keep_their_signatures(comfy_snippet):
    r = comfy_snippet(SIGNATURE_SNIPPET, timeout=300)
    assert not r["missing"], f"ComfyUI no longer has: {r['missing']}"
    assert not r["drift"], f"ComfyUI signatures changed (update the override and compat.OVERRIDDEN): {r['drift']}"


NODE_MODULES_NAMES = list(NODE_MODULES)


def test_the_packs_overrides_accept_every_argument_comfyui_passes(comfy_snippet):
    r = comfy_snippet(SIGNATURE_SNIPPET, timeout=300)
    # the guiders' inner_sample and the DMD sampler's sample must be among those checked
    assert set(NODE_MODULES_NAMES) <= set(r["modules"]), r["modules"]
    names = " ".join(r["overrides"])
    assert (
        "CoopGuider.inner_sample" in names and "SwitchGuider.inner_sample" in names and "DMDSampler.sample" in names
    ), names
    bad = {k: v for k, v in r["overrides"].items() if v}
    assert not bad, f"overrides that would raise TypeError on this ComfyUI: {bad}"


COMPAT_SNIPPET = r"""
import torch, dataclasses
from comfy_api.latest import io
import tempo_testnodes as tn
from comfyui_tempo.nodes import comfy_model, compat

res = {"schema_has_aliases": "search_aliases" in compat.schema_fields()}
# a model built as ComfyUI >= 0.30 builds it (gradients off), weights as inference tensors as a loader leaves them
with torch.inference_mode():
    model = tn.tiny_sd_model()
net = model.model.diffusion_model
net.requires_grad_(False)
twin = comfy_model.to_trainable(net)
frozen = comfy_model.to_trainable(net, trainable=False)
res["trainable"] = all(p.requires_grad for p in twin.parameters())
res["frozen"] = not any(p.requires_grad for p in frozen.parameters())
res["no_inference_tensors"] = not any(p.is_inference() for p in twin.parameters())
x = torch.randn(1, 4, 8, 8)
out = twin(x, torch.tensor([500.0]), context=torch.randn(1, 2, 64))
out.square().mean().backward()
res["grads"] = sum(p.grad is not None for p in twin.parameters())
res["params"] = sum(1 for _ in twin.parameters())

errors = {}
for what, fn in {
    "nested": lambda: compat.refuse_nested([(1, 4, 8, 8), (1, 8, 16)], "latent_image"),
    "one_shape": lambda: compat.refuse_nested([(1, 4, 8, 8)], "latent_image"),
    "video": lambda: compat.refuse_not_image_latent(torch.zeros(1, 4, 3, 8, 8), "samples"),
    "image": lambda: compat.refuse_not_image_latent(torch.zeros(1, 4, 8, 8), "samples"),
}.items():
    try:
        fn()
        errors[what] = None
    except ValueError as e:
        errors[what] = str(e)
res["errors"] = errors
RESULT = res
"""


@pytest.fixture(scope="module")
def compat_result(comfy_snippet):
    return comfy_snippet(COMPAT_SNIPPET, timeout=300)


def test_trainable_copies_train_on_a_model_built_without_gradients(compat_result):
    r = compat_result
    assert r["trainable"] and r["no_inference_tensors"] and r["frozen"], r
    assert r["grads"] == r["params"], r


def test_nested_and_video_latents_are_refused_by_name(compat_result):
    e = compat_result["errors"]
    assert e["nested"].startswith("latent_image: expected one image latent") and "2 parts" in e["nested"], e
    assert e["video"].startswith("samples: expected a latent tensor [B, C, H, W]") and "video" in e["video"], e
    assert e["one_shape"] is None and e["image"] is None, e


def test_search_aliases_where_this_comfyui_has_them(comfy, compat_result):
    from comfyui_tempo.nodes.registry import NODE_IDS, SEARCH_ALIASES

    info = comfy.object_info()
    assert set(SEARCH_ALIASES) == set(NODE_IDS)
    for node_id in NODE_IDS:
        served = info[node_id].get("search_aliases")
        if compat_result["schema_has_aliases"]:
            assert served == SEARCH_ALIASES[node_id], (node_id, served)
        else:  # an older ComfyUI: the pack loads without them
            assert not served, (node_id, served)
    if compat_result["schema_has_aliases"]:
        assert "teacache" in info["TempoAdaptiveKSampler"]["search_aliases"]


RENOISE_SNIPPET = r"""
import torch
import comfy.model_base
import tempo_testnodes as tn
from comfyui_tempo.nodes import bridge_nodes, dmd, dmd_pairs

res = {}
with torch.inference_mode():
    model = tn.tiny_sd_model(comfy.model_base.ModelType.FLOW)
    ms = model.get_model_object("model_sampling")
    calls = []
    orig = ms.noise_scaling
    def counting(sigma, noise, latent_image, max_denoise=False):
        calls.append(float(torch.as_tensor(sigma).flatten()[0]))
        return orig(sigma, noise, latent_image, max_denoise)
    ms.noise_scaling = counting
    pos = [[torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(1)), {}]]
    out = dmd.DMDKSampler.execute(model, 0, "999,499", 1.0, pos, {"samples": torch.zeros(1, 4, 8, 8)})
    res["dmd_renoise_calls"] = calls
    res["finite"] = bool(torch.isfinite(out.args[0]["samples"]).all())
    ms.noise_scaling = orig
import comfy.latent_formats
video = tn.tiny_sd_model()
video.model.latent_format = comfy.latent_formats.Mochi()  # any video latent format (3 spatial dimensions)
try:
    dmd_pairs.DMDRegressionPairs.execute(video, pos, pos, 64, 64, 1, 2, 1.0, 999, 1, 0, "host/video")
    res["pairs_video"] = "no error"
except ValueError as e:
    res["pairs_video"] = str(e)
try:
    bridge_nodes.LatentBridge.execute({"samples": torch.zeros(1, 4, 3, 8, 8)}, None, None, 0, 0, 1.0, "bilinear")
    res["bridge_5d"] = "no error"
except ValueError as e:
    res["bridge_5d"] = str(e)
RESULT = res
"""


def test_dmd_renoises_through_the_models_noise_scaling_and_image_only_nodes_refuse_video(comfy_snippet):
    """ComfyUI's CONST.noise_scaling applies a model's noise_scale (0.33): the DMD sampler's re-noising between
    steps goes through it instead of a hand-written (1 - s) x0 + s n."""
    r = comfy_snippet(RENOISE_SNIPPET, timeout=300)
    assert r["finite"] and len(r["dmd_renoise_calls"]) == 1, r
    assert r["pairs_video"].startswith("teacher: DMD training serves image models") and "Mochi" in r["pairs_video"], r
    assert r["bridge_5d"].startswith("samples: expected a latent tensor [B, C, H, W]") and "video" in r["bridge_5d"], r


KIND_SNIPPET = r"""
import comfy.model_base
import tempo_testnodes as tn
from comfyui_tempo.nodes import comfy_model, comfy_vae, dmd_files

res = {}
for name in ("EPS", "V_PREDICTION", "V_PREDICTION_EDM", "FLOW", "EDM", "IMG_TO_IMG", "FLOW_COSMOS"):
    model_type = getattr(comfy.model_base.ModelType, name, None)
    if model_type is None:
        continue
    try:
        model = tn.tiny_sd_model(model_type)
    except Exception as e:  # a model type this tiny UNet cannot be built with on this ComfyUI
        res[name] = {"skipped": f"{type(e).__name__}: {e}"}
        continue
    try:
        comfy_model.dmd_schedule(model, "teacher")
        dmd = "served"
    except dmd_files.DMDNodeError as e:
        dmd = str(e)
    res[name] = {"kind": comfy_model.model_kind(model), "bridge": comfy_vae.model_schedule(model).kind, "dmd": dmd}
RESULT = res
"""


def test_one_model_kind_each_caller_decides_what_it_refuses(comfy_snippet):
    """nodes/comfy_model.model_kind is the pack's one: eps, v, flow, edm or x0 (None for others). The DMD nodes
    serve eps, v and flow (a named error otherwise); the bridges take EDM as v and x0 as eps, as before."""
    r = comfy_snippet(KIND_SNIPPET, timeout=300)
    want = {
        "EPS": ("eps", "eps"),
        "V_PREDICTION": ("v", "v"),
        "V_PREDICTION_EDM": ("v", "v"),
        "FLOW": ("flow", "flow"),
        "EDM": ("edm", "v"),
        "IMG_TO_IMG": ("x0", "eps"),
        "FLOW_COSMOS": (None, "eps"),
    }
    built = {k: v for k, v in r.items() if "skipped" not in v}
    assert {"EPS", "V_PREDICTION", "FLOW", "EDM"} <= set(built), r
    for name, got in built.items():
        assert (got["kind"], got["bridge"]) == want[name], (name, got)
        if got["kind"] in ("eps", "v", "flow"):
            assert got["dmd"] == "served", (name, got)
        else:
            assert got["dmd"].startswith("teacher: DMD needs an eps, v-prediction or flow"), (name, got)
