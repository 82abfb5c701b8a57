"""training (plain PyTorch; no ComfyUI import)."""
