"""The pack's front end in a real ComfyUI page: the extension loads cleanly, the example workflows
load in the front end and convert to the API prompt the nodes expect.

Run: TEMPO_COMFYUI=/path/to/ComfyUI python -m pytest tests/browser
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WEB_JS = REPO / "web" / "tempo.js"
WORKFLOW_DIR = REPO / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
EXT_URL = "/extensions/comfyui_tempo/tempo.js"
PACK_TYPES = {"TempoAdaptiveKSampler", "TempoAdaptiveSampler", "TempoAdaptiveModel"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


# ----------------------------------------------------------------------------- served files
def test_extensions_lists_tempo_js(comfy_api):
    listed = comfy_api.get("/extensions")
    assert EXT_URL in listed, f"{EXT_URL} not in /extensions: {[u for u in listed if 'tempo' in u] or listed[:20]}"
    status, ctype, body = _get(comfy_api.url + EXT_URL)
    assert status == 200 and "javascript" in ctype, (status, ctype)
    assert body == WEB_JS.read_bytes()


def test_workflow_templates_are_served(comfy_api):
    listed = comfy_api.get("/workflow_templates")
    assert sorted(listed.get("comfyui_tempo", [])) == sorted(p.stem for p in WORKFLOWS), listed
    for path in WORKFLOWS:
        served = comfy_api.get(f"/api/workflow_templates/comfyui_tempo/{path.name}")
        assert served == json.loads(path.read_text()), path.name


# ----------------------------------------------------------------------------- the page
def test_page_loads_without_errors_from_the_extension(comfy_page):
    page = comfy_page
    assert page.server.url + EXT_URL in page.requested, f"the page never fetched {EXT_URL}"
    names = page.evaluate("() => (app.extensions || []).map((e) => e.name)")
    assert "comfyui_tempo.AdaptiveSkipReport" in names, names
    assert not page.errors_mentioning("tempo.js"), "\n".join(page.errors_mentioning("tempo.js"))
    assert not page.errors_mentioning("comfyui_tempo"), "\n".join(page.errors_mentioning("comfyui_tempo"))
    # newer front ends warn when a module that is not public API is imported (`"scripts/widgets.js"
    # is an internal module ...`); web/tempo.js must cause none of these (the warning names the
    # module, not the importer: the modules tempo.js can import are checked by name)
    imported = set(re.findall(r"""["']\.\./\.\./(scripts/[\w/.-]+\.js)["']""", WEB_JS.read_text()))
    notices = [
        c["text"]
        for c in page.console
        if c["type"] == "warning" and "internal module" in c["text"] and any(f'"{m}"' in c["text"] for m in imported)
    ]
    assert not notices, notices
    # the pack's nodes are known to the front end, with their display names
    titles = page.evaluate(
        "(types) => Object.fromEntries(types.map((t) => [t, LiteGraph.registered_node_types[t]?.title ?? null]))",
        sorted(PACK_TYPES),
    )
    assert titles == {
        "TempoAdaptiveKSampler": "AdaptiveDiffusion KSampler",
        "TempoAdaptiveModel": "AdaptiveDiffusion (model patch)",
        "TempoAdaptiveSampler": "AdaptiveDiffusion Sampler",
    }


ON_EXECUTED_JS = """
() => {
  const ks = LiteGraph.createNode("TempoAdaptiveKSampler");
  app.graph.add(ks);
  const count = () => ks.widgets.filter((w) => w.name === "skip_report").length;
  const out = {};
  for (const [label, message] of [["undefined", undefined], ["null", null], ["empty", {}],
                                   ["images only", { images: [] }], ["empty list", { text: [] }]]) {
    ks.onExecuted(message);
    out[label] = count();
  }
  ks.onExecuted({ text: "AdaptiveDiffusion [paper]: NFE 5.0 of 10 (2.00x), 5/10 steps skipped for the whole batch, path CCCCsCsCsC" });
  out.text = ks.widgets.find((w) => w.name === "skip_report").value;
  ks.onExecuted({ text: ["first", "second"] });
  out.joined = ks.widgets.find((w) => w.name === "skip_report").value;
  out.count = count();
  const plain = LiteGraph.createNode("KSampler");
  app.graph.add(plain);
  plain.onExecuted?.({ text: ["not ours"] });
  out.plain = plain.widgets.map((w) => w.name).filter((n) => n === "skip_report").length;
  app.graph.remove(ks);
  app.graph.remove(plain);
  return out;
}
"""


def test_report_box_only_for_messages_with_text_and_only_on_our_node(comfy_page):
    out = comfy_page.evaluate(ON_EXECUTED_JS)
    assert [out[k] for k in ("undefined", "null", "empty", "images only", "empty list")] == [0] * 5, out
    assert out["text"] == (
        "AdaptiveDiffusion [paper]: NFE 5.0 of 10 (2.00x)\n5/10 steps skipped for the whole batch\npath CCCCsCsCsC"
    )
    assert out["joined"] == "first\n\nsecond" and out["count"] == 1
    assert out["plain"] == 0
    assert not comfy_page.errors_mentioning("tempo.js"), "\n".join(comfy_page.errors_mentioning("tempo.js"))


# ----------------------------------------------------------------------------- workflows
def expected_inputs(node: dict, object_info: dict) -> dict:
    """The API inputs a UI node's widgets_values stand for, by /object_info's input order
    (a control_after_generate widget adds one value after its input that is not an input)."""
    info = object_info[node["type"]]
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
    values = list(node.get("widgets_values") or [])
    linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
    out, k = {}, 0
    for name in order:
        spec = specs[name]
        opts = spec[1] if len(spec) > 1 else {}
        if not (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) or opts.get("forceInput"):
            continue
        if name not in linked:
            out[name] = values[k]
        k += 2 if opts.get("control_after_generate") else 1
        if opts.get("image_upload"):  # LoadImage's upload button: one more widget value ("image"), no input
            k += 1
    assert k == len(values), f"{node['type']} #{node['id']}: {len(values)} widget values, inputs need {k}"
    return out


def unavailable_choices(node: dict, object_info: dict) -> dict:
    """The node's choice inputs (COMBO) whose value in the workflow is not among the server's options:
    the model files a workflow names that this server does not have."""
    info = object_info[node["type"]]
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    out = {}
    for name, value in expected_inputs(node, object_info).items():
        spec = specs[name]
        options = spec[0] if isinstance(spec[0], list) else (spec[1] if len(spec) > 1 else {}).get("options")
        if isinstance(options, list) and value not in options:
            out[name] = value
    return out


@pytest.fixture(scope="module")
def object_info(comfy_api):
    return comfy_api.object_info()


SPOT_CHECKS = {
    "adaptive_ksampler_sd15.json": {
        "TempoAdaptiveKSampler": {
            "steps": 50,
            "sampler_name": "euler",
            "scheduler": "normal",
            "cfg": 7.0,
            "denoise": 1.0,
            "mode": "target_speedup",
            "target_speedup": 2.0,
            "threshold": 0.01,
            "max_skip": 4,
            "extrapolation": "auto",
            "force_last": 0,
            "start_percent": 0.0,
            "estimator_space": "vp",
            "batch_mode": "per_sample",
            "planner": "schedule",
        },
        "CheckpointLoaderSimple": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
        "EmptyLatentImage": {"width": 512, "height": 512, "batch_size": 1},
    },
    "adaptive_sampler_custom_advanced.json": {
        "TempoAdaptiveSampler": {
            "sampler_name": "dpmpp_2m",
            "mode": "target_speedup",
            "target_speedup": 2.0,
            "max_skip": 4,
        },
        "BasicScheduler": {"scheduler": "karras"},
    },
    "adaptive_split_run.json": {
        "TempoAdaptiveModel": {"mode": "target_speedup", "target_speedup": 2.0, "split_plan": "whole_run"},
        "KSamplerAdvanced": {"steps": 20, "sampler_name": "euler", "scheduler": "simple", "noise_seed": 42},
    },
    "adaptive_model_patch.json": {
        "TempoAdaptiveModel": {
            "mode": "target_speedup",
            "target_speedup": 2.0,
            "threshold": 0.01,
            "batch_mode": "per_sample",
        },
        "KSampler": {"sampler_name": "euler", "scheduler": "normal"},
    },
}


def test_there_are_example_workflows():
    assert {p.name for p in WORKFLOWS} >= set(SPOT_CHECKS)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_loads_and_converts_in_the_front_end(comfy_page, object_info, path):
    wf = json.loads(path.read_text())
    seen = comfy_page.load_graph(wf)
    assert not seen["missing"], f"{path.name}: missing node types {seen['missing']}"
    assert len(seen["nodes"]) == len(wf["nodes"]), (len(seen["nodes"]), len(wf["nodes"]))
    # No node has errors, but for one reason this server gives: newer front ends (1.4x) also mark a
    # node whose file choice (a checkpoint, LoRA, generator) is not among the server's options as a
    # missing model ("errors found"), and this server has no model files. Such a node must have such
    # a value; older front ends mark none of them.
    wf_nodes = {str(n["id"]): n for n in wf["nodes"]}
    flagged = {
        n["id"]: unavailable_choices(wf_nodes[str(n["id"])], object_info) for n in seen["nodes"] if n["has_errors"]
    }
    assert all(flagged.values()), f"{path.name}: nodes with errors not explained by a missing file: {flagged}"
    # node ids: numbers in the workflow; the front end's own node ids are strings in newer front ends
    assert sorted((str(n["id"]), n["type"]) for n in seen["nodes"]) == sorted(
        (str(n["id"]), n["type"]) for n in wf["nodes"]
    )

    # saved again by the front end, every node keeps its widget values (same order, same count)
    saved = {n["id"]: n for n in seen["saved"]["nodes"]}
    for node in wf["nodes"]:
        assert saved[node["id"]].get("widgets_values", []) == node.get("widgets_values", []), (
            f"{path.name}: {node['type']} #{node['id']} widgets_values changed on load/save"
        )

    comfy_page.screenshot(f"workflow_{path.stem}.png")
    prompt = comfy_page.graph_to_prompt()["output"]
    assert set(prompt) == {str(n["id"]) for n in wf["nodes"]}
    links = {link[0]: link for link in wf["links"]}
    for node in wf["nodes"]:
        api = prompt[str(node["id"])]
        assert api["class_type"] == node["type"]
        want = expected_inputs(node, object_info)
        got_widgets = {k: v for k, v in api["inputs"].items() if not isinstance(v, list)}
        assert got_widgets == want, f"{path.name}: {node['type']} #{node['id']}"
        for inp in node.get("inputs", []):
            if inp.get("link") is None:
                continue
            _, src, src_slot, _, _, _ = links[inp["link"]]
            assert api["inputs"][inp["name"]] == [str(src), src_slot], (node["type"], inp["name"])
        # every required input of the node is given
        required = set(object_info[node["type"]]["input"].get("required", {}))
        assert required <= set(api["inputs"]), (node["type"], required - set(api["inputs"]))

    by_type = {}
    for node_id, api in prompt.items():
        by_type.setdefault(api["class_type"], []).append(api["inputs"])
    for type_, checks in SPOT_CHECKS.get(path.name, {}).items():
        assert type_ in by_type, f"{path.name} has no {type_}"
        for name, value in checks.items():
            assert by_type[type_][0][name] == value, f"{path.name}: {type_}.{name} = {by_type[type_][0][name]!r}"
    from comfyui_tempo.nodes.registry import NODE_IDS  # every node of the pack (AdaptiveDiffusion, Coop, DMD)

    assert set(NODE_IDS) & set(by_type), f"{path.name} uses none of the pack's nodes"
