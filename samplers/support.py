"""Which of ComfyUI's samplers AdaptiveDiffusion can serve, and how (plain data, no ComfyUI import).

Each entry says how the sampler evaluates the model inside one step (so that a step is skipped or
run as a whole), whether it injects noise (so the estimator can regress it out) and, for those that
do, which noise sampler ComfyUI builds by default (the pack builds the same one, so the noise
sequence is unchanged). The host tier runs every served sampler inside ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SamplerSupport:
    served: bool
    family: str  # "single", "multistep", "multi-eval", or "-" when refused
    stochastic: bool = False
    noise: str | None = None  # "default" | "brownian" | "brownian_gpu": the base sampler's own
    endpoint_corrector: bool = False  # a second evaluation at sigma_{i+1} (Heun; the 2-stage ancestrals at eta 1)
    note: str = ""
    discard_penultimate_sigma: bool = False  # ComfyUI's KSampler runs n + 1 steps without the last nonzero sigma
    respace: str = ""  # mode target's "auto" re-spaces by this rule of samplers.respace.auto_respace
    reuse: str = ""  # "hold_low_noise": extrapolation "auto" holds the last direction below sigma 1 and after a step of
    # 0.2 or more in log sigma; "hold_long_gap": after a step of 1.5 times the run's median or more; "hold_below_sigma":
    # below sigma 1; "hold_always": throughout (eps / v models)
    low_eta_base: str = ""  # below eta 1 (samplers.adaptive.LOW_ETA), auto's extrapolation starts from this one
    # it reads the unguided prediction through a post-CFG hook (CFG++): a skipped step calls the hooks with reused
    # predictions (nodes/adaptive_cfgpp.py), the unguided one by this form of POST_CFG_FORMS
    post_cfg: str = ""


_S = SamplerSupport
# each rule was measured on the sampler(s) named; the samplers ComfyUI alone has were given theirs by `comfyui-tempo
# bench adaptive --comfyui-grid --comfyui-reuse-sweep` (chosen on testbed / testbed_hr, held out on three models and
# two step counts; docs/adaptive.md, "ComfyUI's other samplers")
_HOLD = "hold_low_noise"  # samplers.adaptive.HOLD_BELOW_SIGMA / HOLD_STEP: dpmpp_2m_sde (its variants given it),
# res_multistep_ancestral, exp_heun_2_x0_sde
_GAP = "hold_long_gap"  # samplers.adaptive.HOLD_GAP: euler_ancestral, ddpm, sa_solver_pece
_BELOW = "hold_below_sigma"  # samplers.adaptive.HOLD_BELOW_SIGMA alone: dpm_2_ancestral
_ALWAYS = "hold_always"  # the paper's hold throughout (eps / v models): dpmpp_sde, dpmpp_3m_sde, sa_solver,
# dpmpp_2s_ancestral, seeds_2, seeds_3
_MID = (
    "at eta 1 its second evaluation, midway (log sigma) between sigma_i and sigma_down, is at sigma_{i+1}: taken as "
    "the step's, as Heun's"
)
_CFG_PP = (
    "CFG++: at a skipped step its post-CFG hook gets the unguided prediction reused by the guided one's rule and "
    "weights; otherwise the rules of the sampler it is the CFG++ form of"
)

SUPPORT: dict[str, SamplerSupport] = {
    "euler": _S(True, "single"),
    "ddim": _S(True, "single", note="ComfyUI's ddim is euler; reusing d is the official eps reuse"),
    "lcm": _S(True, "single", True, "default"),
    "ddpm": _S(True, "single", True, "default", reuse=_GAP),
    "euler_ancestral": _S(True, "single", True, "default", reuse=_GAP, low_eta_base="log_linear"),
    "lms": _S(True, "multistep", respace="final_jump"),
    "dpmpp_2m": _S(True, "multistep"),
    "ipndm": _S(True, "multistep"),
    "ipndm_v": _S(True, "multistep"),
    "deis": _S(True, "multistep"),
    "res_multistep": _S(True, "multistep"),
    "gradient_estimation": _S(True, "multistep"),
    "uni_pc": _S(
        True,
        "multistep",
        note="the estimator sees UniPC's predictor latents",
        discard_penultimate_sigma=True,
        respace="min_steps",
    ),
    "uni_pc_bh2": _S(
        True,
        "multistep",
        note="the estimator sees UniPC's predictor latents",
        discard_penultimate_sigma=True,
        respace="min_steps",
    ),
    "dpmpp_2m_sde": _S(True, "multistep", True, "brownian", reuse=_HOLD),
    "dpmpp_2m_sde_gpu": _S(True, "multistep", True, "brownian_gpu", reuse=_HOLD),
    "dpmpp_2m_sde_heun": _S(True, "multistep", True, "brownian", reuse=_HOLD),
    "dpmpp_2m_sde_heun_gpu": _S(True, "multistep", True, "brownian_gpu", reuse=_HOLD),
    "dpmpp_3m_sde": _S(True, "multistep", True, "brownian", reuse=_ALWAYS, respace="chunks_long_last"),
    "dpmpp_3m_sde_gpu": _S(True, "multistep", True, "brownian_gpu", reuse=_ALWAYS, respace="chunks_long_last"),
    "res_multistep_ancestral": _S(True, "multistep", True, "default", reuse=_HOLD),
    "er_sde": _S(True, "multistep", True, "default"),
    "sa_solver": _S(True, "multistep", True, "default", reuse=_ALWAYS),
    "sa_solver_pece": _S(
        True,
        "multistep",
        True,
        "default",
        note="its corrector re-evaluates at the same sigma; under extrapolation auto it extrapolates log-linearly "
        "(its first skip comes before it injects noise or evaluates twice in a step)",
        reuse=_GAP,
    ),
    "heun": _S(True, "multi-eval", endpoint_corrector=True),
    "dpm_2": _S(True, "multi-eval", discard_penultimate_sigma=True),
    "dpm_2_ancestral": _S(
        True,
        "multi-eval",
        True,
        "default",
        endpoint_corrector=True,
        note=_MID,
        discard_penultimate_sigma=True,
        reuse=_BELOW,
    ),
    "dpmpp_2s_ancestral": _S(True, "multi-eval", True, "default", endpoint_corrector=True, note=_MID, reuse=_ALWAYS),
    "dpmpp_sde": _S(True, "multi-eval", True, "brownian", reuse=_ALWAYS),
    "dpmpp_sde_gpu": _S(True, "multi-eval", True, "brownian_gpu", reuse=_ALWAYS),
    "seeds_2": _S(True, "multi-eval", True, "default", reuse=_ALWAYS),
    "seeds_3": _S(True, "multi-eval", True, "default", reuse=_ALWAYS),
    "exp_heun_2_x0": _S(
        True,
        "multi-eval",
        endpoint_corrector=True,
        note="ComfyUI >= 0.5: seeds_2 with r = 1, its second evaluation is at sigma_{i+1}",
    ),
    "exp_heun_2_x0_sde": _S(
        True,
        "multi-eval",
        True,
        "default",
        endpoint_corrector=True,
        note="ComfyUI >= 0.5: seeds_2 with r = 1, its second evaluation is at sigma_{i+1}",
        reuse=_HOLD,
    ),
    "heunpp2": _S(
        False, "-", note="it evaluates two schedule points ahead (sigma_{i+2}), which crosses step boundaries"
    ),
    "dpm_fast": _S(False, "-", note="it chooses its own step sizes, off the schedule"),
    "dpm_adaptive": _S(False, "-", note="it chooses its own step sizes, off the schedule"),
}

#: ComfyUI's CFG++ samplers and the sampler each one is the CFG++ form of (its step shape and rules are that one's)
CFG_PP_TWINS = {
    "euler_cfg_pp": "euler",
    "euler_ancestral_cfg_pp": "euler_ancestral",
    "dpmpp_2s_ancestral_cfg_pp": "dpmpp_2s_ancestral",
    "dpmpp_2m_cfg_pp": "dpmpp_2m",
    "res_multistep_cfg_pp": "res_multistep",
    "res_multistep_ancestral_cfg_pp": "res_multistep_ancestral",
    "gradient_estimation_cfg_pp": "gradient_estimation",
}
#: how a CFG++ sampler's unguided prediction is reused at a skipped step: "same_rule", by the guided one's rule and
#: weights (the pack's); "held_guidance", the guided one's reuse with the guidance direction (unguided minus guided)
#: of the last computed step held (measured against it: ``bench adaptive --comfyui-post-cfg-sweep``)
POST_CFG_FORMS = ("same_rule", "held_guidance")
for _pp, _twin in CFG_PP_TWINS.items():
    _t = SUPPORT[_twin]
    SUPPORT[_pp] = replace(_t, post_cfg="same_rule", note=f"{_t.note}; {_CFG_PP}" if _t.note else _CFG_PP)

# ComfyUI's function names (comfy.k_diffusion.sampling.sample_<name>, uni_pc, dpm_fast wrappers)
FUNCTION_NAMES = {f"sample_{k}": k for k in SUPPORT}
FUNCTION_NAMES.update(
    {
        "sample_unipc": "uni_pc",
        "sample_unipc_bh2": "uni_pc_bh2",
        "dpm_fast_function": "dpm_fast",
        "dpm_adaptive_function": "dpm_adaptive",
    }
)


class UnsupportedSampler(ValueError):
    """The chosen sampler cannot be served; the message says why and what to pick instead."""


def served_names() -> list[str]:
    return [k for k, v in SUPPORT.items() if v.served]


def lookup(name: str) -> SamplerSupport:
    """The entry for a ComfyUI sampler name; a clear error for one that cannot be served."""
    entry = SUPPORT.get(name)
    if entry is None:
        raise UnsupportedSampler(
            f"sampler_name: AdaptiveDiffusion does not know the sampler {name!r}; "
            f"it serves: {', '.join(served_names())}"
        )
    if not entry.served:
        raise UnsupportedSampler(
            f"sampler_name: AdaptiveDiffusion cannot serve {name!r}: {entry.note}. "
            "Pick another sampler (for example euler, dpmpp_2m or heun)."
        )
    return entry


def adaptive_kwargs(name: str) -> dict:
    """What ``samplers.adaptive.adaptive_sample`` needs to know of the sampler `name` (its step shape and rules), so
    that the nodes, the benchmarks and the tests run it alike."""
    e = lookup(name)
    return {
        "endpoint_corrector": e.endpoint_corrector,
        "sampler_respace": e.respace,
        "sampler_reuse": e.reuse,
        "sampler_low_eta_base": e.low_eta_base,
    }


def name_of_function(fn) -> str | None:
    """ComfyUI sampler name of a k-diffusion sampler function, or None when it is not one of ours."""
    return FUNCTION_NAMES.get(getattr(fn, "__name__", ""))


def support_matrix_markdown() -> str:
    """The sampler support table of docs/adaptive.md ("Sampler support")."""
    rows = [
        "| sampler | served | kind | noise handling | re-spaced by respace auto (eps / v models) "
        "| reuse under extrapolation auto | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    rules = {
        "final_jump": "on a schedule ending in a long step (normal)",
        "min_steps": "from 20 steps computed",
        "chunks_long_last": "always: the plan's number of steps as runs of consecutive steps merged, equal where they "
        "divide the schedule (every other sigma at 2x and an even step count), else the longer runs last",
    }
    reuse = {
        _HOLD: "held below sigma 1 and 0.2 or more in log sigma from the last computed step (eps / v models), "
        "linear elsewhere{}; where every skip of the plan holds, the plan adds the injected noise to its cost",
        _GAP: "held 1.5 or more of the run's median steps (in log sigma) from the last computed step (eps / v models), "
        "linear elsewhere",
        _BELOW: "held below sigma 1 (eps / v models), linear elsewhere",
        _ALWAYS: "held throughout, the paper's reuse, the plan adding the injected noise to its cost (eps / v models); "
        "linear on flow models",
    }
    low_eta = " ({} below eta 1 or at s_noise 0, which SamplerCustom can set)"
    for name, e in SUPPORT.items():
        noise = "regressed out of the estimator; x0 reused at skips above sigma 3 (eps / v)" if e.stochastic else "-"
        # s_noise 0 gives a one-evaluation sampler the deterministic base (log-linear); a multi-evaluation one stays linear
        one_eval = " (log-linear at s_noise 0, which SamplerCustom can set)" if e.family != "multi-eval" else ""
        rows.append(
            f"| `{name}` | {'yes' if e.served else 'no'} | {e.family} | {noise} | {rules.get(e.respace, '-')} "
            f"| {reuse.get(e.reuse, '-').format(one_eval)}{low_eta.format(e.low_eta_base.replace('_', '-')) if e.low_eta_base else ''} | {e.note} |"
        )
    return "\n".join(rows)
