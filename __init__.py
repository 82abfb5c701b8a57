"""ComfyUI-Tempo: a ComfyUI node pack that makes diffusion sampling cheaper.

ComfyUI loads this folder as a package and calls ``comfy_entrypoint``. Outside ComfyUI the same
package is importable as ``comfyui_tempo`` (the algorithms, the testbed, the CLI) and importing it
never touches ComfyUI.
"""

import logging

WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]

log = logging.getLogger("comfyui_tempo")


async def comfy_entrypoint():
    """V3 entry point: ComfyUI calls this at start-up and registers the returned extension.

    Each node module is imported on its own: one that fails (a missing optional dependency, an
    older ComfyUI) is left out with a logged reason and never stops ComfyUI or the other nodes.
    """
    from comfy_api.latest import ComfyExtension

    from .nodes import registry

    node_list = registry.load_node_classes(log)

    class TempoExtension(ComfyExtension):
        async def get_node_list(self):
            return node_list

    return TempoExtension()
