"""Moved to ``testbed/distill.py`` (``python -m comfyui_tempo.testbed.distill``).

A temporary alias, lab code the pack never imports (``.comfyignore`` drops it): it stays only until
tests/host/test_host_dmd.py imports ``comfyui_tempo.testbed.distill`` (and the documented commands name
it); then delete this file and its ``.comfyignore`` line. Imported, ``comfyui_tempo.training.distill_testbed``
is the very same module object; run with ``python -m``, it runs the distillation.
"""

import sys

from ..testbed import distill

if __name__ == "__main__":
    raise SystemExit(distill.main())
sys.modules[__name__] = distill
