"""Browser tier: the pack's front end (web/, workflows/) in a real ComfyUI page in headless Chromium.

Needs, or every test here is skipped with the reason:
    TEMPO_COMFYUI (and optionally TEMPO_COMFYUI_PYTHON)  a ComfyUI tree, as for tests/host
    a Chromium binary    TEMPO_CHROMIUM, else `chromium` / `chromium-browser` on PATH
                         (Debian: apt-get install chromium)
    the driver           the `playwright` Python package in the Python running pytest
                         (`.venv/bin/pip install playwright`, tested with 1.65.3; only its driver:
                         the browser is the system Chromium above, never `playwright install`)

Front ends: ComfyUI 0.3.64 serves comfyui-frontend-package 1.27.10, 0.33.0 serves 1.49.6; the tests
use what both offer (app, LiteGraph, app.graph, graphToPrompt, loadGraphData) and tell the
differences apart by what the page has, not by version: node ids are numbers in 1.27 and strings in
1.49 at run time (saved workflows hold numbers in both), so ids are compared as strings.

Reuses tests/host's harness (comfy_client: ComfyServer, make_base); the server here is its own
session server, with the same custom_nodes layout (comfyui_tempo + tempo_testnodes).

Fixtures:
    comfy_web     ComfyServer serving the front end (session)
    comfy_api     ComfyClient for it
    browser_ctx   a Playwright persistent context on a fresh user-data dir (session)
    comfy_page    ComfyPage: the ComfyUI page loaded once, with its console / page errors recorded
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

_HOST_DIR = Path(__file__).resolve().parents[1] / "host"
if str(_HOST_DIR) not in sys.path:
    sys.path.insert(0, str(_HOST_DIR))

import comfy_client  # noqa: E402
from comfy_client import ComfyClient, ComfyServer, HostError  # noqa: E402

ENV_CHROMIUM = "TEMPO_CHROMIUM"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}
# front-end settings for a quiet page: no first-run template browser, no minimap
PAGE_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
SCREENSHOT_DIR = Path(os.environ.get("TEMPO_BROWSER_SCREENSHOTS", tempfile.gettempdir())) / "tempo_browser"


def find_chromium() -> tuple[str | None, str]:
    raw = os.environ.get(ENV_CHROMIUM, "").strip()
    if raw:
        if Path(raw).is_file() and os.access(raw, os.X_OK):
            return raw, ""
        return None, f"{ENV_CHROMIUM}={raw} is not an executable file"
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path, ""
    return None, f"no Chromium found: apt-get install chromium, or set {ENV_CHROMIUM}=/path/to/chromium"


def find_driver() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return (
            f"the Playwright driver is missing ({e}): pip install playwright into the Python running "
            f"pytest (.venv/bin/pip install playwright; tested with 1.65.3); no `playwright install`: "
            f"the browser is the system Chromium"
        )
    return ""


@pytest.fixture(autouse=True)
def _require_comfyui():
    install, reason = comfy_client.find_comfyui()
    if install is None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def comfy_web(tmp_path_factory):
    install, reason = comfy_client.find_comfyui()
    if install is None:
        pytest.skip(reason)
    base = comfy_client.make_base(tmp_path_factory.mktemp("comfy_web_base"))
    server = ComfyServer(install, base)
    try:
        server.start(timeout=180.0)
        failed = comfy_client.import_failed_lines_for(server.import_failures(), comfy_client.PACK_LINK)
        failed += comfy_client.import_failed_lines_for(server.import_failures(), comfy_client.TESTNODES_LINK)
        if failed:
            raise HostError(
                "ComfyUI could not import a custom node pack:\n"
                + "\n".join(failed)
                + f"\n--- server log ---\n{server.log_tail(120)}"
            )
        _post_json(server.url + "/settings", PAGE_SETTINGS)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def comfy_api(comfy_web) -> ComfyClient:
    return ComfyClient(comfy_web)


def _post_json(url: str, body) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


@pytest.fixture(scope="session")
def browser_ctx(tmp_path_factory):
    chromium, reason = find_chromium()
    if chromium is None:
        pytest.skip(reason)
    reason = find_driver()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium_profile")  # a fresh --user-data-dir
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport=VIEWPORT,
            timeout=60_000,
        )
        try:
            yield ctx
        finally:
            ctx.close()


_BUILD_PRELUDE_JS = """
  const api = window.comfyAPI.api.api;
  if (!window.__tempoEvents) {
    window.__tempoEvents = [];
    for (const kind of ["execution_error", "execution_success", "execution_interrupted"]) {
      api.addEventListener(kind, (e) => window.__tempoEvents.push({ kind, detail: e.detail }));
    }
  }
  await app.loadGraphData(
    { last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [], config: {}, extra: {}, version: 0.4 },
    true, true, null, { showMissingNodesDialog: false, showMissingModelsDialog: false });
  const add = (type, pos, values = {}) => {
    const node = LiteGraph.createNode(type);
    if (!node) throw new Error("cannot create " + type);
    node.pos = pos;
    app.graph.add(node);
    for (const [name, value] of Object.entries(values)) {
      const w = node.widgets.find((w) => w.name === name);
      if (!w) throw new Error(type + " has no widget " + name);
      w.value = value;
    }
    return node;
  };
"""


class ComfyPage:
    """The ComfyUI page and what its console said."""

    def __init__(self, page, server: ComfyServer):
        self.page, self.server = page, server
        self.console: list[dict] = []  # {"type", "text", "url"}
        self.page_errors: list[str] = []
        self.failed_requests: list[str] = []
        self.requested: list[str] = []  # every URL the page asked for
        page.on("console", self._on_console)
        page.on("pageerror", lambda err: self.page_errors.append(f"{err}\n{getattr(err, 'stack', '') or ''}"))
        page.on("request", lambda req: self.requested.append(req.url))
        page.on("requestfailed", lambda req: self.failed_requests.append(req.url))
        page.on(
            "response", lambda resp: resp.status >= 400 and self.failed_requests.append(f"{resp.status} {resp.url}")
        )

    def _on_console(self, msg) -> None:
        try:
            url = (msg.location or {}).get("url", "")
        except Exception:
            url = ""
        self.console.append({"type": msg.type, "text": msg.text, "url": url})

    def load(self, timeout: float = 90.0) -> "ComfyPage":
        t0 = time.monotonic()
        self.page.goto(self.server.url + "/", wait_until="load", timeout=timeout * 1000)
        # the app is up when its graph exists and the extensions (ours included) are registered
        self.page.wait_for_function(
            "() => window.app && window.app.graph && window.app.canvas && window.comfyAPI"
            " && window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 100",
            timeout=timeout * 1000,
        )
        self.load_seconds = time.monotonic() - t0
        return self

    def errors_mentioning(self, needle: str) -> list[str]:
        out = [
            f"console.{c['type']}: {c['text']} ({c['url']})"
            for c in self.console
            if c["type"] in ("error", "warning") and (needle in c["text"] or needle in c["url"])
        ]
        out += [f"pageerror: {e}" for e in self.page_errors if needle in e]
        out += [f"request failed: {u}" for u in self.failed_requests if needle in u]
        return out

    def evaluate(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def build_graph(self, body: str, arg=None):
        """Run `body` (JS statements, `arg` in scope, ending in a return) on an emptied graph, with
        `add(type, pos, values)` to create a node and set its widgets; the run's execution events
        (error / success / interrupted) collect in window.__tempoEvents."""
        return self.page.evaluate("async (arg) => {\n" + _BUILD_PRELUDE_JS + body + "}", arg)

    def load_graph(self, workflow: dict) -> dict:
        """app.loadGraphData(workflow) with the dialogs off; returns what the front end saw:
        missing (node types it did not know), nodes (id, type, has_errors) and the workflow as the
        front end saves it again (app.graph.serialize())."""
        return self.page.evaluate(_LOAD_GRAPH_JS, workflow)

    def graph_to_prompt(self) -> dict:
        """await app.graphToPrompt(): {"output": API-format prompt, "workflow": UI format}."""
        return self.page.evaluate(
            "async () => { const p = await app.graphToPrompt(); return {output: p.output, workflow: p.workflow}; }"
        )

    def show_graph_origin(self) -> None:
        """Scale 1, the graph's origin near the top left of what the user sees: the canvas starts
        below the menu bar in older front ends and under the (overlaid) side and top bars in newer
        ones, so the offset is taken from where the canvas element is."""
        self.page.evaluate(_SHOW_ORIGIN_JS)

    def screenshot(self, name: str, wait_images: bool = False) -> Path:
        """A PNG of the page in SCREENSHOT_DIR. wait_images: first wait (10 s at most, no failure)
        until every image-preview node that has an input connected shows its loaded images (newer
        front ends set them a moment after the run ends)."""
        if wait_images:
            try:
                self.page.wait_for_function(_IMAGES_SHOWN_JS, timeout=10_000, polling=200)
            except Exception:
                pass
            self.page.wait_for_timeout(200)
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOT_DIR / name
        self.page.screenshot(path=str(path))
        return path


_SHOW_ORIGIN_JS = """
() => {
  const rect = app.canvas.canvas.getBoundingClientRect();
  app.canvas.ds.scale = 1;
  app.canvas.ds.offset = [Math.max(0, 100 - rect.x), Math.max(0, 110 - rect.y)];
  app.canvas.setDirty(true, true);
}
"""

_IMAGES_SHOWN_JS = """
() => app.graph.nodes
  .filter((n) => ["PreviewImage", "SaveImage"].includes(n.type) && n.inputs?.some((i) => i.link != null))
  .every((n) => n.imgs?.length && n.imgs.every((img) => img.complete && img.naturalWidth > 0))
"""


_LOAD_GRAPH_JS = """
async (workflow) => {
  if (!window.__tempoTestHooked) {
    // the front end hands extensions the list it fills with unknown node types
    app.registerExtension({
      name: "tempo.browser-tests.missing-types",
      beforeConfigureGraph(graphData, missingNodeTypes) { window.__tempoMissing = missingNodeTypes; },
    });
    window.__tempoTestHooked = true;
  }
  window.__tempoMissing = null;
  await app.loadGraphData(workflow, true, true, null,
                          { showMissingNodesDialog: false, showMissingModelsDialog: false });
  const missing = (window.__tempoMissing || []).map((m) => (typeof m === "string" ? m : m.type));
  for (const n of workflow.nodes || []) {
    if (!(n.type in LiteGraph.registered_node_types) && !missing.includes(n.type)) missing.push(n.type);
  }
  const nodes = app.graph.nodes.map((n) => ({ id: n.id, type: n.type, has_errors: !!n.has_errors }));
  return { missing, nodes, saved: JSON.parse(JSON.stringify(app.graph.serialize())) };
}
"""


@pytest.fixture(scope="session")
def comfy_page(browser_ctx, comfy_web) -> ComfyPage:
    page = browser_ctx.pages[0] if browser_ctx.pages else browser_ctx.new_page()
    return ComfyPage(page, comfy_web).load()
