"""workflows/*.json: valid ComfyUI UI-format workflows (what the UI's Save writes) using only the
pack's nodes and ComfyUI core nodes, with consistent links. No ComfyUI needed; tests/browser loads
them in the real front end and checks the API prompt they convert to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyui_tempo.nodes.registry import NODE_IDS

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
EXPECTED = {"adaptive_ksampler_sd15.json", "adaptive_sampler_custom_advanced.json", "adaptive_model_patch.json"}
EXPECTED |= {"adaptive_calibrated.json", "adaptive_split_run.json"}
EXPECTED |= {
    "coop_latent_bridge.json",
    "coop_noisy_latent_bridge.json",
    "coop_sampler.json",
    "coop_guider_custom_advanced.json",
    "coop_time_decoupled.json",
}
EXPECTED |= {
    "dmd_regression_pairs.json",
    "dmd_trainer.json",
    "dmd_loader_ksampler.json",
    "dmd_sampler_custom.json",
    "dmd2_sdxl_released.json",
    "dmd_job_export.json",
}
EXPECTED |= {"td_trainer.json"}

# ComfyUI core node types an example workflow may use (nodes.py, comfy_extras, front-end only nodes)
CORE_TYPES = {
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "CLIPSetLastLayer",
    "EmptyLatentImage",
    "LatentUpscale",
    "KSampler",
    "KSamplerAdvanced",
    "VAEDecode",
    "VAEEncode",
    "VAELoader",
    "UNETLoader",
    "CLIPLoader",
    "DualCLIPLoader",
    "LoraLoader",
    "LoraLoaderModelOnly",
    "SaveImage",
    "PreviewImage",
    "LoadImage",
    "RandomNoise",
    "DisableNoise",
    "CFGGuider",
    "BasicGuider",
    "BasicScheduler",
    "KarrasScheduler",
    "KSamplerSelect",
    "SamplerCustom",
    "SamplerCustomAdvanced",
    "ModelSamplingDiscrete",
    "EasyCache",
    "EmptySD3LatentImage",
    "FluxGuidance",
    "ConditioningZeroOut",
    "ConditioningCombine",
    "Note",
    "MarkdownNote",
    "Reroute",
    "PrimitiveNode",
}
# the pack's nodes' widget values in order (a seed with control_after_generate has 2): when a node's inputs
# change, update this table and regenerate workflows/ (python tests/browser/make_workflows.py URL)
ADAPTIVE_SETTINGS = [
    "mode",
    "target_speedup",
    "threshold",
    "max_skip",
    "extrapolation",
    "force_last",
    "start_percent",
    "estimator_space",
    "late_bias",
    "placement",
    "estimator",
    "batch_mode",
    "planner",
    "respace",
    "split_plan",
]
PACK_WIDGETS = {
    "TempoAdaptiveKSampler": [
        "seed",
        "control_after_generate",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "denoise",
        *ADAPTIVE_SETTINGS,
    ],
    "TempoAdaptiveSampler": ["sampler_name", *ADAPTIVE_SETTINGS],
    "TempoAdaptiveModel": list(ADAPTIVE_SETTINGS),
    "TempoAdaptiveCalibrate": [
        "seed",
        "control_after_generate",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "target_speedup",
        "extrapolation",
        "save_name",
        "batch_rows",
        "check",
    ],
    "TempoAdaptiveProfileLoader": ["profile_name"],
    # Coop-Diffusion (nodes/coop.py)
    "TempoLatentBridge": ["width", "height", "scale", "resize_method", "tiled", "tile_size", "overlap"],
    "TempoNoisyLatentBridge": [
        "cfg_source",
        "steps",
        "end_at_step",
        "scheduler",
        "width",
        "height",
        "scale",
        "resize_method",
        "seed",
        "control_after_generate",
        "tiled",
        "renoise_level",
    ],
    "TempoCoopSampler": [
        "cfg_a",
        "cfg_b",
        "seed",
        "control_after_generate",
        "steps",
        "sampler_name",
        "scheduler",
        "denoise",
        "d",
        "d_start",
        "d_end",
        "taper",
        "width_b",
        "height_b",
        "resize_method",
    ],
    "TempoCoopGuider": ["cfg_a", "cfg_b", "d", "d_start", "d_end", "taper", "width_b", "height_b", "resize_method"],
    "TempoTimeDecoupledSampler": [
        "cfg_structure",
        "cfg_texture",
        "seed",
        "control_after_generate",
        "steps",
        "sampler_name",
        "scheduler",
        "denoise",
        "switch_mode",
        "switch_timestep",
        "switch_sigma",
        "handoff",
        "width",
        "height",
        "scale",
        "resize_method",
        "renoise_level",
    ],
    # DMD (nodes/dmd.py)
    "TempoDMDGeneratorLoader": ["generator_name", "conditioning_timestep", "timesteps", "strength"],
    "TempoDMDSampler": ["timesteps"],
    "TempoDMDKSampler": ["seed", "control_after_generate", "timesteps", "cfg"],
    "TempoDMDRegressionPairs": [
        "width",
        "height",
        "pairs_per_conditioning",
        "steps",
        "guidance",
        "conditioning_timestep",
        "batch_size",
        "seed",
        "control_after_generate",
        "save_name",
    ],
    "TempoDMDTrainer": [
        "width",
        "height",
        "batch_size",
        "steps",
        "generator_lr",
        "fake_lr",
        "guidance",
        "update_ratio",
        "conditioning_timestep",
        "generator_steps",
        "warmup_steps",
        "regression_weight",
        "regression_pairs",
        "gan_weight",
        "lora_rank",
        "seed",
        "control_after_generate",
        "save_name",
        "checkpoint_interval",
        "resume",
        "gradient_checkpointing",
    ],
    # DMD jobs for torchrun (nodes/dmd_job_node.py): the trainer's widgets less resume, with the teacher's file and
    # the job's name after the links
    "TempoDMDJobExport": [
        "teacher_checkpoint",
        "job_name",
        "width",
        "height",
        "batch_size",
        "steps",
        "generator_lr",
        "fake_lr",
        "guidance",
        "update_ratio",
        "conditioning_timestep",
        "generator_steps",
        "warmup_steps",
        "regression_weight",
        "regression_pairs",
        "gan_weight",
        "lora_rank",
        "seed",
        "control_after_generate",
        "save_name",
        "checkpoint_interval",
        "gradient_checkpointing",
    ],
    # time-decoupled training (nodes/td_train.py)
    "TempoTimeDecoupledTrainer": [
        "timestep_min",
        "timestep_max",
        "width",
        "height",
        "batch_size",
        "steps",
        "learning_rate",
        "lora_rank",
        "warmup_steps",
        "uncond_dropout",
        "seed",
        "control_after_generate",
        "save_name",
        "checkpoint_interval",
        "resume",
    ],
}
ADAPTIVE_CHOICES = {
    "mode": {"target_speedup", "threshold", "paper"},
    "extrapolation": {"auto", "linear", "hold", "quadratic", "linear_x0", "log_linear"},
    "estimator": {"latent", "reuse_error"},
    "estimator_space": {"vp", "raw"},
    "batch_mode": {"per_sample", "per_batch"},
    "planner": {"schedule", "pace"},
    "respace": {"auto", "off", "on"},
    "split_plan": {"whole_run", "call"},
    "control_after_generate": {"fixed", "increment", "decrement", "randomize"},
}
NODE_KEYS = {"id", "type", "pos", "size", "flags", "order", "mode", "properties"}


def test_pack_widget_table_covers_the_registry():
    assert set(PACK_WIDGETS) == set(NODE_IDS)


def test_the_example_workflows_exist():
    assert EXPECTED <= {p.name for p in WORKFLOWS}


ADAPTIVE_RANGES = {
    "target_speedup": (1.0, 5.0),
    "threshold": (0.0, 1.0),
    "late_bias": (0.0, 1.0),
    "placement": (0.0, 2.0),
}


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_is_ui_format_with_known_nodes(path):
    wf = json.loads(path.read_text())
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"):
        assert key in wf, f"{path.name}: no {key}"
    assert wf["version"] == 0.4
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    assert wf["last_node_id"] >= max(nodes)
    assert wf["last_link_id"] >= max((link[0] for link in wf["links"]), default=0)
    assert sorted(n["order"] for n in wf["nodes"]) == list(range(len(nodes)))

    types = {n["type"] for n in wf["nodes"]}
    unknown = types - CORE_TYPES - set(NODE_IDS)
    assert not unknown, f"{path.name}: node types neither core nor the pack's: {unknown}"
    assert types & set(NODE_IDS), f"{path.name} uses none of the pack's nodes"

    for n in wf["nodes"]:
        assert NODE_KEYS <= set(n), (n["id"], NODE_KEYS - set(n))
        assert len(n["pos"]) == 2 and len(n["size"]) == 2 and n["mode"] == 0
        assert n["properties"].get("Node name for S&R") == n["type"]
        if n["type"] in PACK_WIDGETS:
            names = PACK_WIDGETS[n["type"]]
            values = n.get("widgets_values")
            assert isinstance(values, list) and len(values) == len(names), (
                f"{path.name}: {n['type']} has {len(values)} widget values, the node {len(names)}: "
                "regenerate workflows/ with tests/browser/make_workflows.py"
            )
            named = dict(zip(names, values))
            for name, choices in ADAPTIVE_CHOICES.items():
                if name in named:
                    assert named[name] in choices, (n["type"], name, named[name])
            for name, (lo, hi) in ADAPTIVE_RANGES.items():  # Calibrate has target_speedup but not the rest
                if name in named:
                    assert lo <= named[name] <= hi, (path.name, n["type"], name, named[name])
            if "width" in named:  # DMD trainer / pairs: pixel sizes divisible by 8
                assert named["width"] % 8 == 0 and named["height"] % 8 == 0, (path.name, named)

    # links: [id, origin node, origin slot, target node, target slot, type], mirrored on both ends
    for link_id, src, src_slot, dst, dst_slot, type_ in wf["links"]:
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert link_id in (out.get("links") or []), (path.name, link_id)
        assert inp["link"] == link_id, (path.name, link_id)
        assert out["type"] == inp["type"] == type_, (path.name, link_id, out["type"], inp["type"], type_)
    link_ids = {link[0] for link in wf["links"]}
    for n in wf["nodes"]:
        for inp in n.get("inputs", []):
            assert inp.get("link") is None or inp["link"] in link_ids, (n["id"], inp)
        for out in n.get("outputs", []):
            assert set(out.get("links") or []) <= link_ids, (n["id"], out)


def test_split_run_example_wires_two_patched_models_into_one_run():
    """adaptive_split_run.json: KSamplerAdvanced steps 0-10 of 20 with the leftover noise, then 10-20 from its latent,
    each model behind its own AdaptiveDiffusion patch planning the whole run (split_plan whole_run), as Wan 2.2's two
    experts are wired."""
    wf = json.loads((REPO / "workflows" / "adaptive_split_run.json").read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    src = {(link[3], link[4]): link[1] for link in wf["links"]}  # (target node, slot) -> origin node
    names = ["add_noise", "noise_seed", "control", "steps", "cfg", "sampler_name", "scheduler", "start_at_step",
             "end_at_step", "return_with_leftover_noise"]  # fmt: skip
    ksa = sorted(
        (
            dict(zip(names, n["widgets_values"])) | {"id": n["id"]}
            for n in wf["nodes"]
            if n["type"] == "KSamplerAdvanced"
        ),
        key=lambda v: v["start_at_step"],
    )
    first, second = ksa
    assert (first["add_noise"], first["start_at_step"], first["end_at_step"]) == ("enable", 0, 10)
    assert first["return_with_leftover_noise"] == "enable"
    assert (second["add_noise"], second["start_at_step"], second["end_at_step"]) == ("disable", 10, 10000)
    for key in ("noise_seed", "steps", "cfg", "sampler_name", "scheduler"):
        assert first[key] == second[key], key
    slot = {n["id"]: {i["name"]: k for k, i in enumerate(n["inputs"])} for n in wf["nodes"]}
    assert src[(second["id"], slot[second["id"]]["latent_image"])] == first["id"]
    patches = [nodes[src[(k["id"], slot[k["id"]]["model"])]] for k in (first, second)]
    for patch in patches:
        assert patch["type"] == "TempoAdaptiveModel"
        assert dict(zip(PACK_WIDGETS["TempoAdaptiveModel"], patch["widgets_values"]))["split_plan"] == "whole_run"
    assert patches[0]["id"] != patches[1]["id"]


def test_ksampler_example_settings():
    wf = json.loads((REPO / "workflows" / "adaptive_ksampler_sd15.json").read_text())
    by_type = {n["type"]: n for n in wf["nodes"]}
    ks = dict(zip(PACK_WIDGETS["TempoAdaptiveKSampler"], by_type["TempoAdaptiveKSampler"]["widgets_values"]))
    assert (ks["steps"], ks["cfg"], ks["sampler_name"], ks["scheduler"], ks["mode"]) == (
        50,
        7.0,
        "euler",
        "normal",
        "target_speedup",
    )
    assert by_type["CheckpointLoaderSimple"]["widgets_values"] == ["v1-5-pruned-emaonly.safetensors"]
    assert by_type["EmptyLatentImage"]["widgets_values"][:2] == [512, 512]
    # the skip plot goes to a PreviewImage
    plot_links = by_type["TempoAdaptiveKSampler"]["outputs"][1]["links"]
    targets = {link[3] for link in wf["links"] if link[0] in plot_links}
    assert any(n["id"] in targets and n["type"] == "PreviewImage" for n in wf["nodes"])


def test_dmd_example_settings():
    """The DMD examples: DMD2's SD1.5 recipe in the trainer, cfg 1 in the samplers, the released SDXL files
    at their own timesteps (4-step LoRA 999/749/499/249, 1-step UNet 399)."""
    wf = json.loads((REPO / "workflows" / "dmd_trainer.json").read_text())
    tr = next(n for n in wf["nodes"] if n["type"] == "TempoDMDTrainer")
    named = dict(zip(PACK_WIDGETS["TempoDMDTrainer"], tr["widgets_values"]))
    assert (named["guidance"], named["update_ratio"], named["generator_lr"], named["conditioning_timestep"]) == (
        1.75,
        10,
        1e-5,
        999,
    )
    wf = json.loads((REPO / "workflows" / "dmd2_sdxl_released.json").read_text())
    ks = {
        n.get("title"): dict(zip(PACK_WIDGETS["TempoDMDKSampler"], n["widgets_values"]))
        for n in wf["nodes"]
        if n["type"] == "TempoDMDKSampler"
    }
    assert sorted(v["timesteps"] for v in ks.values()) == ["399", "999,749,499,249"]
    assert all(v["cfg"] == 1.0 for v in ks.values())


def test_dmd_job_export_example_settings():
    """The job example: dmd_trainer.json's front and DMD2 settings, its teacher_checkpoint the file its
    CheckpointLoaderSimple loads (the job refers to that file), a global batch several GPUs can split."""
    wf = json.loads((REPO / "workflows" / "dmd_job_export.json").read_text())
    job = next(n for n in wf["nodes"] if n["type"] == "TempoDMDJobExport")
    named = dict(zip(PACK_WIDGETS["TempoDMDJobExport"], job["widgets_values"]))
    ck = next(n for n in wf["nodes"] if n["type"] == "CheckpointLoaderSimple")
    assert named["teacher_checkpoint"] == ck["widgets_values"][0]
    trainer = json.loads((REPO / "workflows" / "dmd_trainer.json").read_text())
    tr = next(n for n in trainer["nodes"] if n["type"] == "TempoDMDTrainer")
    tr_named = dict(zip(PACK_WIDGETS["TempoDMDTrainer"], tr["widgets_values"]))
    for k in ("guidance", "update_ratio", "generator_lr", "fake_lr", "conditioning_timestep", "width", "lora_rank"):
        assert named[k] == tr_named[k], k
    assert named["batch_size"] % 8 == 0 and named["job_name"] == "dmd/sd15_job"
    # the teacher comes straight from the loader (a LoRA in between would be refused)
    src = {link[4]: link[1] for link in wf["links"] if link[3] == job["id"]}
    slot = {inp["name"]: i for i, inp in enumerate(job["inputs"])}
    assert src[slot["teacher"]] == ck["id"]


def test_coop_example_settings():
    """The Coop-Diffusion examples: the paper's switch at timestep 500 (not a step index), d = 0.5 weighting
    model B, the noisy bridge continuing where the first KSamplerAdvanced stopped."""

    def named(name, node_type):
        wf = json.loads((REPO / "workflows" / name).read_text())
        node = next(n for n in wf["nodes"] if n["type"] == node_type)
        return dict(zip(PACK_WIDGETS[node_type], node["widgets_values"])), wf

    td, _ = named("coop_time_decoupled.json", "TempoTimeDecoupledSampler")
    assert (td["switch_mode"], td["switch_timestep"], td["scale"]) == ("timestep", 500, 2.0)
    cs, _ = named("coop_sampler.json", "TempoCoopSampler")
    assert (cs["d"], cs["taper"], cs["width_b"], cs["height_b"]) == (0.5, "none", 1024, 1024)
    nb, wf = named("coop_noisy_latent_bridge.json", "TempoNoisyLatentBridge")
    ksa = next(n for n in wf["nodes"] if n["type"] == "KSamplerAdvanced")["widgets_values"]
    assert (nb["steps"], nb["end_at_step"], nb["scheduler"]) == (ksa[3], ksa[8], ksa[6]) == (20, 10, "normal")
    assert ksa[9] == "enable"  # return_with_leftover_noise


def test_td_trainer_example_settings():
    """The time-decoupled training example: a structure LoRA on t 500..999 at 256 px and a texture LoRA on 0..499 at
    512 px, sampled by the Time-Decoupled Sampler switching at the same timestep with the texture stage at 2x."""
    wf = json.loads((REPO / "workflows" / "td_trainer.json").read_text())
    trainers = {
        n["id"]: dict(zip(PACK_WIDGETS["TempoTimeDecoupledTrainer"], n["widgets_values"]))
        for n in wf["nodes"]
        if n["type"] == "TempoTimeDecoupledTrainer"
    }
    got = sorted((t["timestep_min"], t["timestep_max"], t["width"], t["save_name"]) for t in trainers.values())
    assert got == [(0, 499, 512, "time_decoupled/texture"), (500, 999, 256, "time_decoupled/structure")]
    td = next(n for n in wf["nodes"] if n["type"] == "TempoTimeDecoupledSampler")
    named = dict(zip(PACK_WIDGETS["TempoTimeDecoupledSampler"], td["widgets_values"]))
    assert (named["switch_mode"], named["switch_timestep"], named["scale"]) == ("timestep", 500, 2.0)
    assert named["renoise_level"] == "paper (equal SNR)"  # the texture expert's trained range ends at the switch
    # the structure trainer's MODEL feeds model_structure, the texture trainer's model_texture
    src = {link[4]: link[1] for link in wf["links"] if link[3] == td["id"]}
    slot = {inp["name"]: i for i, inp in enumerate(td["inputs"])}
    assert trainers[src[slot["model_structure"]]]["timestep_min"] == 500
    assert trainers[src[slot["model_texture"]]]["timestep_max"] == 499
    empty = next(n for n in wf["nodes"] if n["type"] == "EmptyLatentImage")
    assert empty["widgets_values"][:2] == [256, 256]
