"""Scripts and helpers that run inside ComfyUI's Python for the host tests and the benchmark's ComfyUI rows.

Lab code, like ``testbed/`` and ``bench/``: the pack never imports it (``.comfyignore`` leaves it out of
the Registry archive). ``comfy_testbed``: the testbed as a ComfyUI MODEL / VAE; ``host_bench``: the
benchmark's ComfyUI rows, run as a script by ``comfyui-tempo bench adaptive --comfyui``.
"""
