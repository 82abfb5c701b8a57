"""samplers (plain PyTorch; no ComfyUI import)."""
