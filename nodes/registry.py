"""The pack's node ids, and the loader that ComfyUI's entry point calls.

Importable without ComfyUI (NODE_IDS is plain data), so tests and docs can list the nodes.
"""

from __future__ import annotations

import importlib
import logging

# module (relative to this package) -> node ids it defines
NODE_MODULES: dict[str, list[str]] = {
    "adaptive": ["TempoAdaptiveKSampler", "TempoAdaptiveSampler", "TempoAdaptiveModel"],
    "adaptive_profile": ["TempoAdaptiveCalibrate", "TempoAdaptiveProfileLoader"],
    "dmd": ["TempoDMDGeneratorLoader", "TempoDMDSampler", "TempoDMDKSampler"],
    "dmd_pairs": ["TempoDMDRegressionPairs"],
    "dmd_train": ["TempoDMDTrainer"],
    "dmd_job_node": ["TempoDMDJobExport"],
    "bridge_nodes": ["TempoLatentBridge", "TempoNoisyLatentBridge"],
    "coop": ["TempoCoopSampler", "TempoCoopGuider"],
    "time_decoupled": ["TempoTimeDecoupledSampler"],
    "td_train": ["TempoTimeDecoupledTrainer"],
}

NODE_IDS: list[str] = [node_id for ids in NODE_MODULES.values() for node_id in ids]

# what users type in the node search, by node id (ComfyUI >= 0.11 shows them; older ones ignore them)
SEARCH_ALIASES: dict[str, list[str]] = {
    "TempoAdaptiveKSampler": [
        "adaptivediffusion",
        "step skip",
        "skip steps",
        "teacache",
        "easycache",
        "cache",
        "fast ksampler",
    ],
    "TempoAdaptiveSampler": ["adaptivediffusion", "step skip", "skip steps", "teacache", "cache sampler"],
    "TempoAdaptiveModel": ["adaptivediffusion", "step skip", "teacache", "easycache", "model patch", "cache"],
    "TempoAdaptiveCalibrate": ["adaptivediffusion", "calibrate", "skip profile", "greedy", "optimal skip path"],
    "TempoAdaptiveProfileLoader": ["adaptivediffusion", "skip profile", "load profile", "calibrated"],
    "TempoDMDGeneratorLoader": ["dmd", "dmd2", "one step", "1 step", "distilled", "turbo", "lcm lora"],
    "TempoDMDSampler": ["dmd", "dmd2", "one step", "few step", "distilled sampler"],
    "TempoDMDKSampler": ["dmd", "dmd2", "one step", "few step", "turbo ksampler"],
    "TempoDMDRegressionPairs": ["dmd", "distillation", "teacher pairs", "ode pairs"],
    "TempoDMDTrainer": ["dmd", "dmd2", "distill", "distillation", "train one step", "trainer"],
    "TempoDMDJobExport": ["dmd", "dmd job", "torchrun", "multi gpu", "cluster", "distributed training", "export job"],
    "TempoLatentBridge": ["interposer", "latent converter", "vae convert", "latent upscale", "sd15 to sdxl"],
    "TempoNoisyLatentBridge": ["interposer", "hires fix", "refiner", "hand-off", "two models"],
    "TempoCoopSampler": ["coop diffusion", "pangu", "model fusion", "mix models", "two models"],
    "TempoCoopGuider": ["coop diffusion", "pangu", "model fusion", "guider"],
    "TempoTimeDecoupledSampler": ["pangu", "structure texture", "refiner", "hires fix", "two stage", "time decoupled"],
    "TempoTimeDecoupledTrainer": [
        "pangu",
        "train lora",
        "structure texture",
        "timestep expert",
        "time decoupled",
        "fine-tune",
    ],
}


def load_node_classes(log: logging.Logger) -> list:
    """Import every node module; one that fails is left out with its reason logged."""
    classes = []
    for module_name, ids in NODE_MODULES.items():
        try:
            module = importlib.import_module(f".{module_name}", __package__)
            classes.extend(module.NODES)
        except Exception as e:  # never break ComfyUI's start-up or the other nodes
            log.warning("ComfyUI-Tempo: nodes %s left out: %s: %s", ", ".join(ids), type(e).__name__, e)
    return classes
