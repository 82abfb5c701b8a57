"""The pack's node ids, and the loader that ComfyUI's entry point calls.

Importable without ComfyUI (NODE_IDS is plain data), so tests and docs can list the nodes.
"""

from __future__ import annotations

import importlib
import logging

# module (relative to this package) -> node ids it defines
NODE_MODULES: dict[str, list[str]] = {
    "adaptive": ["TempoAdaptiveKSampler", "TempoAdaptiveSampler", "TempoAdaptiveModel"],
    "dmd": ["TempoDMDGeneratorLoader", "TempoDMDSampler", "TempoDMDKSampler", "TempoDMDRegressionPairs", "TempoDMDTrainer"],
    "coop": ["TempoLatentBridge", "TempoNoisyLatentBridge", "TempoCoopSampler", "TempoCoopGuider", "TempoTimeDecoupledSampler"],
}

NODE_IDS: list[str] = [node_id for ids in NODE_MODULES.values() for node_id in ids]


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
