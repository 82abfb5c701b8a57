"""Host tier: the pack's tests against a real ComfyUI.

Set TEMPO_COMFYUI (a ComfyUI source tree) and optionally TEMPO_COMFYUI_PYTHON (the Python that runs
it; default <TEMPO_COMFYUI>/../venv/bin/python if it exists, else this Python). Without them every
test in this folder is skipped with that hint; collection never needs ComfyUI.

Setting a host up (once, outside the repo; ComfyUI's code never goes into it): get a ComfyUI source
tree (v0.3.64 or later) at e.g. /work/host/ComfyUI; make a venv beside it (/work/host/venv); in
it install torch and a torchvision built for that same torch (pip install torch==2.14.1
torchvision==0.29.1 on these machines), then ComfyUI's requirements.txt plus `requests`, pytest and
the pack's own dependencies, with a constraint file that pins the torch version so nothing replaces
it (pip install -r ComfyUI/requirements.txt requests pytest -c pin.txt, pin.txt holding
torch==2.14.1). Check it with `OMP_NUM_THREADS=1 venv/bin/python main.py --cpu
--quick-test-for-ci` from the tree. Then:
    TEMPO_COMFYUI=/work/host/ComfyUI python -m pytest tests/host -q

How the pieces run: the pytest process only speaks HTTP and starts subprocesses, so it may be
any Python with pytest, numpy and Pillow. The server and the snippets run under the ComfyUI
Python with OMP_NUM_THREADS=1. ComfyUI imports a custom-node folder under its *path* as the
module name, so BASE/custom_nodes is put on the server's PYTHONPATH for ``import comfyui_tempo``
(used by the test pack); the pack itself must only use relative imports.

Fixtures:
    comfy_install   ComfyInstall(tree, python), or skip
    comfy_base      the session's ComfyUI --base-directory (custom_nodes: comfyui_tempo -> repo root,
                    tempo_testnodes -> tests/host/testnodes)
    comfy_server    one ComfyUI server for the whole session (ComfyServer); log in BASE
    comfy           a ComfyClient for it: object_info(), run(graph), interrupt(), output_images()
    comfy_snippet   run(code, timeout=...) -> the code's RESULT, under the ComfyUI Python with
                    ComfyUI importable (args.cpu set) and comfyui_tempo / tempo_testnodes importable
    tiny_models     the tiny model files a user's loader nodes read, written into BASE/models
                    (tempo_testnodes/tiny_files.py: two SD1.5-detected checkpoints with the real
                    TAESD / TAESDXL as their VAEs, a UNet, a LoRA; the real TAESD files linked into
                    vae_approx), each loaded back through ComfyUI's loader nodes and checked; skips
                    without the TAESD files ($TEMPO_TAESD_DIR, default /work/shared/assets/taesd)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

_HOST_DIR = Path(__file__).resolve().parent
if str(_HOST_DIR) not in sys.path:
    sys.path.insert(0, str(_HOST_DIR))

import comfy_client  # noqa: E402
from comfy_client import ComfyClient, ComfyServer, HostError, find_comfyui, import_failed_lines_for  # noqa: E402

# the test node pack is loaded by ComfyUI, never collected by pytest
collect_ignore = ["testnodes"]


@pytest.fixture(autouse=True)
def _require_comfyui():
    """Skips every host test, with what to set, unless a ComfyUI tree is configured."""
    install, reason = find_comfyui()
    if install is None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def comfy_install() -> comfy_client.ComfyInstall:
    install, reason = find_comfyui()
    if install is None:
        pytest.skip(reason)
    return install


@pytest.fixture(scope="session")
def comfy_base(comfy_install, tmp_path_factory) -> Path:
    return comfy_client.make_base(tmp_path_factory.mktemp("comfy_base"))


@pytest.fixture(scope="session")
def comfy_server(comfy_install, comfy_base):
    server = ComfyServer(comfy_install, comfy_base)
    try:
        server.start(timeout=180.0)
        failed = import_failed_lines_for(server.import_failures(), comfy_client.PACK_LINK)
        failed += import_failed_lines_for(server.import_failures(), comfy_client.TESTNODES_LINK)
        if failed:
            raise HostError(
                "ComfyUI could not import a custom node pack:\n"
                + "\n".join(failed)
                + f"\n--- server log ({server.log_path}) ---\n"
                + server.log_tail(120)
            )
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def comfy(comfy_server) -> ComfyClient:
    return ComfyClient(comfy_server)


@pytest.fixture(scope="session")
def comfy_snippet(comfy_install, comfy_base):
    """run(code, timeout=600) -> RESULT of `code` run under the ComfyUI Python (a subprocess).

    The code runs with cwd the ComfyUI tree, the tree and BASE/custom_nodes on sys.path and
    ``comfy.cli_args.args.cpu = True`` already set; it must assign a JSON-serialisable ``RESULT``.
    Each call is a fresh process (~10 s of imports if it loads comfy.sd / nodes).
    """

    def run(code: str, timeout: float = 600.0):
        return comfy_client.run_snippet(comfy_install, code, base=comfy_base, timeout=timeout)

    return run


TAESD_DIR = Path(os.environ.get("TEMPO_TAESD_DIR") or "/work/shared/assets/taesd")


def have_taesd() -> bool:
    return all(
        (TAESD_DIR / f"{n}_{p}.safetensors").is_file()
        for n in ("taesd", "taesdxl", "taesd3", "taef1")
        for p in ("encoder", "decoder")
    )


@pytest.fixture(scope="session")
def tiny_models(comfy_install, comfy_base):
    """Writes the tiny model files into BASE/models (in a snippet, with ComfyUI's own classes), then
    loads each back through ComfyUI's loader nodes (a second snippet). Returns
    {"names": {role: file name}, "write": {...}, "check": {...}, "seconds": {...}}. The server's
    loaders list files added after it started (ComfyUI's file lists follow the folders' mtimes)."""
    if not have_taesd():
        pytest.skip(f"the TAESD files are not in {TAESD_DIR} (set TEMPO_TAESD_DIR)")
    t0 = time.monotonic()
    write = comfy_client.run_snippet(
        comfy_install,
        (
            "from tempo_testnodes import tiny_files as T\n"
            f"RESULT = T.write_all({str(comfy_base)!r}, {str(TAESD_DIR)!r})\n"
        ),
        base=comfy_base,
        timeout=600,
    )
    t1 = time.monotonic()
    check = comfy_client.run_snippet(
        comfy_install,
        (f"from tempo_testnodes import tiny_files as T\nRESULT = T.check({str(TAESD_DIR)!r})\n"),
        base=comfy_base,
        timeout=600,
    )
    t2 = time.monotonic()
    names = dict(
        ckpt_a="tempo_tiny_sd15.safetensors",
        ckpt_b="tempo_tiny_sd15_b.safetensors",
        unet="tempo_tiny_unet.safetensors",
        lora="tempo_tiny_lora.safetensors",
    )
    return {
        "names": names,
        "write": write,
        "check": check,
        "seconds": {"write_snippet": round(t1 - t0, 1), "check_snippet": round(t2 - t1, 1)},
    }
