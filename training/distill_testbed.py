"""Moved to ``testbed/distill.py`` (``python -m comfyui_tempo.testbed.distill``).

A temporary alias, lab code the pack never imports (``.comfyignore`` drops it): it stays only until
tests/host/test_host_dmd.py imports ``comfyui_tempo.testbed.distill``; then delete this file and its
``.comfyignore`` line. ``comfyui_tempo.training.distill_testbed`` is the very same module object.
"""

import sys

from ..testbed import distill

sys.modules[__name__] = distill
