"""bridges (plain PyTorch; no ComfyUI import)."""
