// ComfyUI-Tempo front-end extension.
//
// AdaptiveDiffusion KSampler (TempoAdaptiveKSampler) sends its skip report as UI output
// {"text": [summary]} after each run. This shows it on the node in a read-only text box, created
// on the first run and updated on every later one. The box is never saved: it is left out of the
// workflow's widgets_values (so saved workflows keep the node's widget order) and out of the API
// prompt sent to the server. The Coop-Diffusion nodes' reports (NFE, VAE calls) are shown the same
// way (REPORTS). No other node is touched.

import { app } from "../../scripts/app.js";

// The STRING widget constructor: app.widgets (the front end's widget registry, core widgets
// included) where the front end has it; else the internal scripts/widgets.js, imported only then
// (newer front ends warn that it is not part of the public API).
async function stringWidget() {
  const registered = app.widgets?.STRING;
  if (typeof registered === "function") return registered;
  const { ComfyWidgets } = await import("../../scripts/widgets.js");
  return ComfyWidgets.STRING;
}
let STRING_WIDGET = null;

const NODE_TYPE = "TempoAdaptiveKSampler";
const WIDGET_NAME = "skip_report";
const BOX_MIN_HEIGHT = 100; // about five lines
const NODE_MIN_WIDTH = 380; // the report's first line unwrapped
const HELP =
  "AdaptiveDiffusion skip report of the last run: network evaluations (NFE) against the steps " +
  "requested, the speed-up, and the step path (C = network ran, s = skipped, p = ran for part of " +
  "the batch). Read-only; not saved with the workflow.";

// message.text is a list of strings (ComfyUI's PreviewText); a plain string is accepted too.
function reportText(message) {
  const raw = message?.text;
  if (raw === undefined || raw === null) return null;
  const parts = (Array.isArray(raw) ? raw : [raw]).filter((p) => p !== undefined && p !== null);
  if (!parts.length) return null;
  return parts.map((p) => formatReport(String(p))).join("\n\n");
}

// One clause a line: "AdaptiveDiffusion [mode]: NFE a of b (x)" / "k/n steps skipped ..." /
// "path CCsC..." / notes. Text in any other shape is shown as it is.
function formatReport(text) {
  return text
    .replace(/\), (\d+\/\d+ steps skipped)/, ")\n$1")
    .replace(/, path (\S+)/, "\npath $1")
    .replace(/ \| /g, "\n");
}

function findReportWidget(node) {
  return node.widgets?.find((w) => w.name === WIDGET_NAME) ?? null;
}

// the other pack nodes that report on themselves: node type -> [placeholder, help]
const REPORTS = {
  TempoCoopSampler: ["Coop-Diffusion report", "Coop-Diffusion report of the last run: NFE of models A and B and VAE calls per step. Read-only; not saved with the workflow."],
  TempoTimeDecoupledSampler: ["Time-decoupled report", "Where the switch fell, NFE of each stage and VAE calls of the last run. Read-only; not saved with the workflow."],
  TempoLatentBridge: ["Latent Bridge report", "Sizes and VAE calls of the last run. Read-only; not saved with the workflow."],
  TempoNoisyLatentBridge: ["Noisy Latent Bridge report", "Hand-off sigmas, start step, NFE and VAE calls of the last run. Read-only; not saved with the workflow."],
};

function addReportWidget(node) {
  const [placeholder, help] = REPORTS[node.comfyClass ?? node.type] ?? ["AdaptiveDiffusion skip report", HELP];
  const widget = STRING_WIDGET(node, WIDGET_NAME, ["STRING", { multiline: true }], app).widget;
  widget.serialize = false; // not in widgets_values
  widget.options = widget.options ?? {};
  widget.options.serialize = false; // not an input of the API prompt
  widget.options.getMinHeight = () => BOX_MIN_HEIGHT;
  // Front ends that draw nodes as Vue components ("Nodes 2.0") render their own text box from the
  // widget (the element below is not shown there): read-only from options.read_only, titled by
  // the widget's label.
  widget.options.read_only = true;
  widget.label = placeholder;
  const el = widget.inputEl ?? widget.element;
  if (el) {
    el.readOnly = true;
    el.title = help;
    el.placeholder = placeholder;
    el.classList?.add("tempo-skip-report");
    el.style.fontFamily = "monospace";
    el.style.fontSize = "11px";
    el.style.lineHeight = "1.35";
  }
  widget.tooltip = help;
  return widget;
}

function showReport(node, text) {
  let widget = findReportWidget(node);
  if (!widget) {
    const before = node.size ? [node.size[0], node.size[1]] : null;
    widget = addReportWidget(node);
    // grow the node to fit the new box, never shrink it
    const min = node.computeSize?.();
    if (before && min) {
      node.setSize?.([Math.max(before[0], min[0], NODE_MIN_WIDTH), Math.max(before[1], min[1])]);
    }
  }
  widget.value = text;
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "comfyui_tempo.AdaptiveSkipReport",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE && !(nodeData?.name in REPORTS)) return;
    STRING_WIDGET ??= await stringWidget();
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      try {
        const text = reportText(message);
        if (text !== null) showReport(this, text);
      } catch (err) {
        console.warn("[comfyui_tempo] could not show the skip report:", err);
      }
      return result;
    };
  },
});
