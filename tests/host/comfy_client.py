"""Host-tier helpers: find a ComfyUI tree, run a real ComfyUI server, talk to it, run snippets.

Test code only; standard library + numpy + Pillow (read back saved images). Nothing here imports
ComfyUI: the server and the snippets run under the ComfyUI Python (``TEMPO_COMFYUI_PYTHON``) in
subprocesses, so the pytest process itself can be any Python that has pytest.

Environment:
    TEMPO_COMFYUI          path to a ComfyUI source tree (the folder holding main.py)
    TEMPO_COMFYUI_PYTHON   the Python that runs it (default: <TEMPO_COMFYUI>/../venv/bin/python
                           if that exists, else the Python running the tests)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_TREE = "TEMPO_COMFYUI"
ENV_PYTHON = "TEMPO_COMFYUI_PYTHON"

HOST_DIR = Path(__file__).resolve().parent
REPO_ROOT = HOST_DIR.parents[1]
TESTNODES_DIR = HOST_DIR / "testnodes"

PACK_LINK = "comfyui_tempo"  # BASE/custom_nodes/comfyui_tempo -> the repo root
TESTNODES_LINK = "tempo_testnodes"  # BASE/custom_nodes/tempo_testnodes -> tests/host/testnodes

SETUP_HINT = (
    f"set {ENV_TREE}=/path/to/ComfyUI (a ComfyUI source tree, the folder holding main.py) and "
    f"{ENV_PYTHON}=/path/to/its/venv/bin/python (default: $TEMPO_COMFYUI/../venv/bin/python if it "
    "exists, else this Python) to run the host tests against a real ComfyUI"
)

_TREE_MARKERS = ("main.py", "nodes.py", "execution.py", "folder_paths.py", "comfy", "comfy_api")


class HostError(RuntimeError):
    """Something went wrong with the ComfyUI host (server, prompt, snippet)."""


@dataclass(frozen=True)
class ComfyInstall:
    tree: Path
    python: Path


def find_comfyui() -> tuple[ComfyInstall | None, str]:
    """The configured ComfyUI install, or (None, reason to skip)."""
    raw = os.environ.get(ENV_TREE, "").strip()
    if not raw:
        return None, f"{ENV_TREE} is not set: {SETUP_HINT}"
    tree = Path(raw).expanduser().resolve()
    missing = [m for m in _TREE_MARKERS if not (tree / m).exists()]
    if missing:
        return None, f"{ENV_TREE}={raw} is not a ComfyUI tree (missing {', '.join(missing)}): {SETUP_HINT}"
    raw_py = os.environ.get(ENV_PYTHON, "").strip()
    if raw_py:
        python = Path(raw_py).expanduser()
        if not python.exists():
            return None, f"{ENV_PYTHON}={raw_py} does not exist: {SETUP_HINT}"
    else:
        default = tree.parent / "venv" / "bin" / "python"
        python = default if default.exists() else Path(sys.executable)
    return ComfyInstall(tree=tree, python=python), ""


def make_base(base: Path) -> Path:
    """Lay out a ComfyUI --base-directory: custom_nodes with the pack and the test pack linked in.

    BASE/custom_nodes also goes on the server's PYTHONPATH: ComfyUI imports a custom-node folder
    under its *path* as module name (nodes.py load_custom_node), not as ``comfyui_tempo``, and
    never puts custom_nodes on sys.path, so ``import comfyui_tempo`` needs it.
    """
    for sub in ("custom_nodes", "user", "output", "input", "temp", "models"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for name, target in ((PACK_LINK, REPO_ROOT), (TESTNODES_LINK, TESTNODES_DIR)):
        link = base / "custom_nodes" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return base


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 60) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<no log: {e}>"
    return "\n".join(lines[-n:])


def _env(pythonpath=()) -> dict[str, str]:
    """The environment of a ComfyUI subprocess: OMP_NUM_THREADS=1, `pythonpath` prepended."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    extra = [str(p) for p in pythonpath]
    if env.get("PYTHONPATH"):
        extra.append(env["PYTHONPATH"])
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(extra)
    return env


# --------------------------------------------------------------------------------------------
# Graphs
# --------------------------------------------------------------------------------------------


class Graph:
    """Builds an API-format graph ({"id": {"class_type", "inputs"}}) node by node.

    g = Graph()
    model = g.node("TempoTestbedModel")
    pos = g.node("TempoTestbedClass", class_id=3)
    ks = g.node("KSampler", model=model.out(0), positive=pos.out(0), ...)
    client.run(g)       # or client.run(g.api())
    """

    class Node:
        def __init__(self, graph: "Graph", node_id: str):
            self.graph, self.id = graph, node_id

        def out(self, index: int = 0) -> list:
            return [self.id, index]

        def set(self, **inputs) -> "Graph.Node":
            self.graph.nodes[self.id]["inputs"].update(inputs)
            return self

    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def node(self, class_type: str, node_id: str | None = None, **inputs) -> "Graph.Node":
        node_id = node_id or str(len(self.nodes) + 1)
        if node_id in self.nodes:
            raise ValueError(f"duplicate node id {node_id}")
        self.nodes[node_id] = {"class_type": class_type, "inputs": dict(inputs)}
        return Graph.Node(self, node_id)

    def api(self) -> dict:
        return json.loads(json.dumps(self.nodes))


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UI_ONLY_NODES = ("Note", "MarkdownNote")


def ui_to_api(wf: dict, object_info: dict, overrides: dict | None = None) -> dict:
    """A UI-format workflow (what workflows/*.json hold) as an API prompt, what the front end's
    graphToPrompt sends: widget values in /object_info's input order (a seed widget's
    control_after_generate value skipped), links as [source node id, output index], notes left out.
    ``overrides``: {node type: {input: value}} applied after the conversion."""
    links = {link[0]: link for link in wf["links"]}
    prompt = {}
    for node in sorted(wf["nodes"], key=lambda n: n["id"]):
        if node["type"] in UI_ONLY_NODES:
            continue
        info = object_info[node["type"]]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        values = list(node.get("widgets_values") or [])
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        inputs, k = {}, 0
        for name in order:
            spec = specs[name]
            opts = spec[1] if len(spec) > 1 else {}
            is_widget = (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not opts.get("forceInput")
            if is_widget:
                if name not in linked:
                    inputs[name] = values[k]
                k += 2 if opts.get("control_after_generate") else 1
            if name in linked:
                link = linked[name]
                inputs[name] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    for node in prompt.values():
        node["inputs"].update((overrides or {}).get(node["class_type"], {}))
    return prompt


# --------------------------------------------------------------------------------------------
# Server + client
# --------------------------------------------------------------------------------------------


class ComfyServer:
    """One ComfyUI server process on 127.0.0.1 with its own base directory."""

    def __init__(self, install: ComfyInstall, base: Path, port: int | None = None, extra_args=()):
        self.install, self.base = install, Path(base)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "comfyui-server.log"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.boot_seconds: float | None = None

    def command(self) -> list[str]:
        db = self.base / "user" / "comfyui.db"
        return [
            str(self.install.python), "main.py", "--cpu",
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base),
            "--database-url", f"sqlite:///{db}",
            "--disable-auto-launch",
            *self.extra_args,
        ]  # fmt: skip

    def log_tail(self, n: int = 60) -> str:
        return tail(self.log_path, n)

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        make_base(self.base)
        self._log_file = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.install.tree,
            env=_env([self.base / "custom_nodes"]),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HostError(
                    f"ComfyUI exited with code {self.proc.returncode} before serving "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        raise HostError(
            f"ComfyUI did not answer HTTP 200 within {timeout:.0f} s (log {self.log_path}):\n{self.log_tail()}"
        )

    def import_failures(self) -> list[str]:
        """Lines of the log that report a failed custom-node import."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [ln for ln in text.splitlines() if "IMPORT FAILED" in ln]

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class ComfyClient:
    """HTTP client for one ComfyUI server (what the frontend does, without the websocket)."""

    def __init__(self, server: ComfyServer):
        self.server = server
        self.url = server.url
        self.base = server.base
        self.client_id = uuid.uuid4().hex

    # -- plumbing ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, timeout: float = 60.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            return e.code, payload

    def get(self, path: str, timeout: float = 60.0):
        status, payload = self._request("GET", path, timeout=timeout)
        if status != 200:
            raise HostError(f"GET {path} -> HTTP {status}: {payload}\n{self.server.log_tail()}")
        return payload

    # -- API --------------------------------------------------------------------------------
    def object_info(self, node_class: str | None = None) -> dict:
        return self.get("/object_info" + (f"/{node_class}" if node_class else ""))

    def queue(self, graph: dict | Graph) -> str:
        """POST /prompt; returns the prompt id. Raises on validation errors (with node_errors)."""
        if isinstance(graph, Graph):
            graph = graph.api()
        status, payload = self._request("POST", "/prompt", {"prompt": graph, "client_id": self.client_id})
        if status != 200 or not isinstance(payload, dict) or "prompt_id" not in payload:
            raise HostError(
                f"prompt rejected (HTTP {status}): {json.dumps(payload, indent=1)[:4000]}\n"
                f"--- server log tail ---\n{self.server.log_tail()}"
            )
        if payload.get("node_errors"):
            raise HostError(
                f"prompt has node_errors: {json.dumps(payload['node_errors'], indent=1)[:4000]}\n"
                f"--- server log tail ---\n{self.server.log_tail()}"
            )
        return payload["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        payload = self.get(f"/history/{prompt_id}")
        return (payload or {}).get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.2, check: bool = True) -> dict:
        """Poll /history until the prompt finished; returns its history entry.

        With check=True (default) an entry whose status is not "success" raises HostError with the
        execution_error (node, exception, traceback) or execution_interrupted details.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") == "success" or (status.get("completed") and not check):
                    return entry
                if not check:
                    return entry
                raise HostError(self.describe_failure(prompt_id, entry))
            if self.server.proc is not None and self.server.proc.poll() is not None:
                raise HostError(f"ComfyUI died while running {prompt_id}:\n{self.server.log_tail()}")
            time.sleep(poll)
        raise HostError(f"prompt {prompt_id} not finished after {timeout:.0f} s\n{self.server.log_tail()}")

    def describe_failure(self, prompt_id: str, entry: dict) -> str:
        msgs = []
        for name, data in entry.get("status", {}).get("messages", []):
            if name == "execution_error":
                msgs.append(
                    f"execution_error in node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type')}: {data.get('exception_message')}\n"
                    + "".join(data.get("traceback", []))
                )
            elif name == "execution_interrupted":
                msgs.append(f"execution_interrupted at node {data.get('node_id')} ({data.get('node_type')})")
        detail = "\n".join(msgs) or json.dumps(entry.get("status"), indent=1)
        return (
            f"prompt {prompt_id} failed ({entry['status'].get('status_str')}):\n{detail}\n"
            f"--- server log tail ---\n{self.server.log_tail()}"
        )

    def run(self, graph: dict | Graph, timeout: float = 300.0, check: bool = True) -> dict:
        """Queue an API-format graph and wait for it; returns the /history entry."""
        return self.wait(self.queue(graph), timeout=timeout, check=check)

    def queue_status(self) -> dict:
        """GET /queue: {"queue_running": [[number, prompt_id, graph, ...]], "queue_pending": [...]}."""
        return self.get("/queue")

    def interrupt(self) -> None:
        status, payload = self._request("POST", "/interrupt", {})
        if status != 200:
            raise HostError(f"POST /interrupt -> HTTP {status}: {payload}")

    def output_files(self, entry: dict, node_id: str | None = None) -> list[Path]:
        """Paths of the images a history entry reports (SaveImage -> output/, PreviewImage -> temp/)."""
        paths = []
        for nid, out in entry.get("outputs", {}).items():
            if node_id is not None and nid != str(node_id):
                continue
            for img in out.get("images", []):
                folder = {"output": "output", "temp": "temp", "input": "input"}[img.get("type", "output")]
                paths.append(self.base / folder / img.get("subfolder", "") / img["filename"])
        return paths

    def output_images(self, entry: dict, node_id: str | None = None) -> list:
        """The images of a history entry as uint8 numpy arrays [H, W, C] (C = 3 or 4)."""
        import numpy as np
        from PIL import Image

        arrays = []
        for p in self.output_files(entry, node_id):
            with Image.open(p) as im:
                arrays.append(np.asarray(im).copy())
        return arrays


# --------------------------------------------------------------------------------------------
# Snippets: Python run with ComfyUI's modules importable
# --------------------------------------------------------------------------------------------

_RUNNER = r"""
import json, os, sys, traceback
tree = os.environ["TEMPO_SNIPPET_TREE"]
sys.path.insert(0, tree)
for p in reversed(json.loads(os.environ["TEMPO_SNIPPET_PATHS"])):
    sys.path.insert(0, p)
from comfy.cli_args import args
args.cpu = True
if os.environ.get("TEMPO_SNIPPET_BASE"):
    args.base_directory = os.environ["TEMPO_SNIPPET_BASE"]
# before `import nodes`: nodes.py puts ComfyUI/comfy first on sys.path, after which `utils`
# would resolve to comfy/utils.py and app/frontend_management.py fails ("'utils' is not a package")
import utils.extra_config  # noqa: E402,F401
ns = {"__name__": "__snippet__", "RESULT": None}
code = open(os.environ["TEMPO_SNIPPET_CODE"]).read()
try:
    exec(compile(code, "<snippet>", "exec"), ns)
except BaseException:
    with open(os.environ["TEMPO_SNIPPET_OUT"], "w") as f:
        json.dump({"ok": False, "error": traceback.format_exc()}, f)
    sys.exit(3)
with open(os.environ["TEMPO_SNIPPET_OUT"], "w") as f:
    json.dump({"ok": True, "result": ns.get("RESULT")}, f)
"""


def run_snippet(
    install: ComfyInstall, code: str, base: Path | None = None, timeout: float = 600.0, extra_paths=()
) -> Any:
    """Run `code` under the ComfyUI Python, cwd the ComfyUI tree, and return its ``RESULT``.

    Before the code runs: the tree (and BASE/custom_nodes, so ``import comfyui_tempo`` and
    ``import tempo_testnodes`` work) are on sys.path, ``comfy.cli_args.args.cpu = True`` (and
    ``args.base_directory = BASE``) are set, so ``import comfy.model_management`` picks the CPU,
    and ``utils.extra_config`` is imported, so a later ``import nodes`` works. The code assigns a JSON-serialisable value to ``RESULT``. An exception in the code
    raises HostError with the snippet's traceback and output.
    """
    with tempfile.TemporaryDirectory(prefix="tempo-snippet-") as tmp:
        tmp = Path(tmp)
        (tmp / "code.py").write_text(code)
        (tmp / "runner.py").write_text(_RUNNER)
        paths = [str(p) for p in extra_paths]
        if base is not None:
            paths.insert(0, str(Path(base) / "custom_nodes"))
        env = _env()
        env.update(
            TEMPO_SNIPPET_TREE=str(install.tree),
            TEMPO_SNIPPET_PATHS=json.dumps(paths),
            TEMPO_SNIPPET_BASE=str(base) if base is not None else "",
            TEMPO_SNIPPET_CODE=str(tmp / "code.py"),
            TEMPO_SNIPPET_OUT=str(tmp / "out.json"),
        )
        try:
            proc = subprocess.run(
                [str(install.python), str(tmp / "runner.py")],
                cwd=install.tree, env=env, capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired as e:
            raise HostError(
                f"snippet timed out after {timeout:.0f} s\n{(e.stdout or '')[-3000:]}{(e.stderr or '')[-3000:]}"
            )
        out = tmp / "out.json"
        result = json.loads(out.read_text()) if out.exists() else None
        if result is None or not result.get("ok"):
            err = result["error"] if result else f"(no result; exit code {proc.returncode})"
            raise HostError(
                f"snippet failed:\n{err}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-5000:]}"
            )
        return result["result"]


def import_failed_lines_for(lines: list[str], name: str) -> list[str]:
    """The IMPORT FAILED lines that name a custom-node folder `name`."""
    pat = re.compile(r"IMPORT FAILED.*[/\\]" + re.escape(name) + r"\s*$")
    return [ln for ln in lines if pat.search(ln)]


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
