"""testbed (plain PyTorch; no ComfyUI import)."""
