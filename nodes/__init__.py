"""ComfyUI adapters: the only place that imports ComfyUI."""
