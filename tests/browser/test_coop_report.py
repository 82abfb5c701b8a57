"""In the browser: the Coop-Diffusion Sampler and the Time-Decoupled Sampler show their reports (NFE, VAE
calls) in the read-only box web/tempo.js adds, as the AdaptiveDiffusion KSampler does; the box is never
saved. The graph uses the test node pack's testbed (model, VAE, class conditioning)."""

from __future__ import annotations

import pytest

BUILD_JS = """
  const { kind } = arg;
  const model = add("TempoTestbedModel", [30, 60]);
  const vae = add("TempoTestbedVAE", [30, 150]);
  const pos = add("TempoTestbedClass", [30, 240], { class_id: 3 });
  const neg = add("TempoTestbedClass", [30, 350], { class_id: 10 });
  const latent = add("TempoTestbedEmptyLatent", [30, 460], { batch_size: 1 });
  let node;
  if (kind === "coop") {
    node = add("TempoCoopSampler", [370, 60], { seed: 1, control_after_generate: "fixed", steps: 6, d: 0.5, cfg_a: 5.0, cfg_b: 5.0 });
    for (const t of ["a", "b"]) {
      model.connect(0, node, node.findInputSlot("model_" + t));
      vae.connect(0, node, node.findInputSlot("vae_" + t));
      pos.connect(0, node, node.findInputSlot("positive_" + t));
      neg.connect(0, node, node.findInputSlot("negative_" + t));
    }
  } else {
    node = add("TempoTimeDecoupledSampler", [370, 60], { seed: 1, control_after_generate: "fixed", steps: 6, cfg_structure: 5.0, cfg_texture: 5.0 });
    for (const t of ["structure", "texture"]) {
      model.connect(0, node, node.findInputSlot("model_" + t));
      pos.connect(0, node, node.findInputSlot("positive_" + t));
      neg.connect(0, node, node.findInputSlot("negative_" + t));
    }
  }
  latent.connect(0, node, node.findInputSlot("latent_image"));
  const dec = add("TempoTestbedDecode", [820, 60]);
  const preview = add("PreviewImage", [820, 170]);
  node.connect(0, dec, 0);
  dec.connect(0, preview, 0);
  app.canvas.setDirty(true, true);
  return { id: node.id, widgets: node.widgets.map((w) => w.name),
           saved: app.graph.serialize().nodes.find((n) => String(n.id) === String(node.id)).widgets_values };
"""

WAIT_JS = """
(id) => {
  const events = window.__tempoEvents || [];
  if (events.some((e) => e.kind !== "execution_success")) return true;
  const w = app.graph.getNodeById(id)?.widgets?.find((w) => w.name === "skip_report");
  return !!(w && typeof w.value === "string" && w.value.length && events.some((e) => e.kind === "execution_success"));
}
"""

STATE_JS = """
async (id) => {
  const node = app.graph.getNodeById(id);
  const box = node.widgets.find((w) => w.name === "skip_report");
  const el = box?.inputEl ?? box?.element;
  const prompt = (await app.graphToPrompt()).output;
  return { events: window.__tempoEvents, text: box?.value ?? null, readOnly: el?.readOnly ?? null,
           placeholder: el?.placeholder ?? null,
           saved: app.graph.serialize().nodes.find((n) => String(n.id) === String(id)).widgets_values,
           promptInputs: prompt[String(id)].inputs };
}
"""


@pytest.mark.parametrize(
    "kind,prefix,placeholder",
    [
        ("coop", "Coop-Diffusion: 6 steps, NFE A 6 + B 6", "Coop-Diffusion report"),
        ("td", "Time-decoupled (timestep switch", "Time-decoupled report"),
    ],
)
def test_coop_report_shown_on_the_node_and_never_saved(comfy_page, kind, prefix, placeholder):
    page = comfy_page
    built = page.build_graph(BUILD_JS, {"kind": kind})
    assert "skip_report" not in built["widgets"]
    page.evaluate("async () => { window.__tempoEvents = []; await app.queuePrompt(0, 1); }")
    page.page.wait_for_function(WAIT_JS, arg=built["id"], timeout=120_000, polling=200)
    state = page.evaluate(STATE_JS, built["id"])
    failed = [e for e in state["events"] if e["kind"] != "execution_success"]
    assert not failed, f"{failed[0]}\n{page.server.log_tail(60)}"
    assert state["text"].startswith(prefix), state["text"]
    assert state["readOnly"] is True and state["placeholder"] == placeholder
    assert state["saved"] == built["saved"]  # the box is not a widget value
    assert "skip_report" not in state["promptInputs"]
    page.show_graph_origin()
    page.screenshot(f"coop_report_{kind}.png", wait_images=True)
    assert not page.errors_mentioning("tempo.js"), "\n".join(page.errors_mentioning("tempo.js"))
