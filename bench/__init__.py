"""bench (plain PyTorch; no ComfyUI import)."""
