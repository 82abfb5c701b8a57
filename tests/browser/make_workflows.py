"""Writes workflows/*.json (ComfyUI UI format, what the UI's Save writes) from ComfyUI's /object_info.

Plain Python (stdlib only); needs no ComfyUI code, only /object_info of a ComfyUI with this pack loaded
(a running server's URL or a saved JSON file), which gives every node's widget order. Run it again
after a node's inputs change, then run tests/unit/test_workflows.py and tests/browser:

    python tests/browser/make_workflows.py http://127.0.0.1:8188            # a running ComfyUI
    python tests/browser/make_workflows.py object_info.json [OUT_DIR]       # default OUT_DIR: workflows/

Use the oldest supported ComfyUI's /object_info (0.3.64; the committed files are its output): from
0.33 the only difference is that SaveImage and PreviewImage get an IMAGE output ("images"), which
the files would then carry as a stale output slot into the older ComfyUI; the 0.3.64 files load in
both front ends (1.27 and 1.49), and 1.49 adds that output itself.
"""

import json
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def read_object_info(source: str) -> dict:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source.rstrip("/") + "/object_info", timeout=60) as r:
            return json.loads(r.read())
    return json.loads(Path(source).read_text())


if len(sys.argv) < 2:
    sys.exit(__doc__)
OI = read_object_info(sys.argv[1])
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "workflows"
OUT.mkdir(parents=True, exist_ok=True)
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def is_widget(spec):
    t = spec[0]
    return isinstance(t, list) or t in WIDGET_TYPES


class WF:
    def __init__(self):
        self.nodes, self.links, self.next_id = [], [], 1

    def node(self, type_, pos, size, title=None, **values):
        """A node with its widget values in /object_info's input order; values not given take the
        input's default. `<name>__control` sets a control_after_generate value (default "fixed")."""
        info = OI[type_]
        req = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        widgets, inputs = [], []
        for name in order:
            spec = req[name]
            opts = spec[1] if len(spec) > 1 else {}
            if is_widget(spec) and not opts.get("forceInput"):
                if name in values:
                    v = values.pop(name)
                elif "default" in opts:
                    v = opts["default"]
                elif isinstance(spec[0], list):
                    v = spec[0][0]
                elif spec[0] == "COMBO":
                    v = opts["options"][0]
                else:
                    raise KeyError(f"{type_}.{name}: no value")
                widgets.append(v)
                if opts.get("control_after_generate"):
                    widgets.append(values.pop(name + "__control", "fixed"))
            else:
                inputs.append({"name": name, "type": spec[0], "link": None})
        assert not values, (type_, values)
        outputs = [
            {"name": n, "type": t, "links": []} for n, t in zip(info.get("output_name", info["output"]), info["output"])
        ]
        n = {
            "id": self.next_id,
            "type": type_,
            "pos": list(pos),
            "size": list(size),
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": {"Node name for S&R": type_},
            "widgets_values": widgets,
        }
        if title:
            n["title"] = title
        self.next_id += 1
        self.nodes.append(n)
        return n

    def link(self, src, out_name, dst, in_name):
        oi = next(i for i, o in enumerate(src["outputs"]) if o["name"] == out_name)
        ii = next(i for i, s in enumerate(dst["inputs"]) if s["name"] == in_name)
        t = src["outputs"][oi]["type"]
        assert dst["inputs"][ii]["type"] == t, (t, dst["inputs"][ii])
        lid = len(self.links) + 1
        self.links.append([lid, src["id"], oi, dst["id"], ii, t])
        src["outputs"][oi]["links"].append(lid)
        dst["inputs"][ii]["link"] = lid

    def dump(self, path):
        # order: topological (Kahn, by id)
        deps = {n["id"]: {link[1] for link in self.links if link[3] == n["id"]} for n in self.nodes}
        done, order = set(), []
        while len(order) < len(self.nodes):
            ready = sorted(i for i in deps if i not in done and deps[i] <= done)
            i = ready[0]
            done.add(i)
            order.append(i)
        for n in self.nodes:
            n["order"] = order.index(n["id"])
            for o in n["outputs"]:
                o["slot_index"] = n["outputs"].index(o)
        wf = {
            "last_node_id": max(n["id"] for n in self.nodes),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {},
            "version": 0.4,
        }
        path.write_text(json.dumps(wf, indent=2) + "\n")


POS = "a photograph of a red fox sitting in a snowy forest, golden hour, detailed fur, sharp focus"
NEG = "blurry, low quality, watermark, text"
CKPT = "v1-5-pruned-emaonly.safetensors"


def front(w):
    ck = w.node("CheckpointLoaderSimple", (30, 200), (320, 98), ckpt_name=CKPT)
    pos = w.node("CLIPTextEncode", (390, 20), (420, 170), title="Positive prompt", text=POS)
    neg = w.node("CLIPTextEncode", (390, 250), (420, 170), title="Negative prompt", text=NEG)
    lat = w.node("EmptyLatentImage", (440, 490), (320, 110), width=512, height=512, batch_size=1)
    w.link(ck, "CLIP", pos, "clip")
    w.link(ck, "CLIP", neg, "clip")
    return ck, pos, neg, lat


# 1. AdaptiveDiffusion KSampler
w = WF()
ck, pos, neg, lat = front(w)
ks = w.node(
    "TempoAdaptiveKSampler",
    (860, 20),
    (340, 500),
    seed=42,
    seed__control="fixed",
    steps=50,
    cfg=7.0,
    sampler_name="euler",
    scheduler="normal",
)
dec = w.node("VAEDecode", (1240, 20), (210, 46))
save = w.node("SaveImage", (1490, 20), (420, 460), filename_prefix="tempo/adaptive_ksampler")
prev = w.node("PreviewImage", (1240, 540), (420, 300), title="Skip plot")
w.link(ck, "MODEL", ks, "model")
w.link(pos, "CONDITIONING", ks, "positive")
w.link(neg, "CONDITIONING", ks, "negative")
w.link(lat, "LATENT", ks, "latent_image")
w.link(ks, "LATENT", dec, "samples")
w.link(ck, "VAE", dec, "vae")
w.link(dec, "IMAGE", save, "images")
w.link(ks, "skip_plot", prev, "images")
w.dump(OUT / "adaptive_ksampler_sd15.json")

# 2. SamplerCustomAdvanced with the AdaptiveDiffusion SAMPLER
w = WF()
ck, pos, neg, lat = front(w)
noise = w.node("RandomNoise", (860, 20), (320, 82), noise_seed=42, noise_seed__control="fixed")
guider = w.node("CFGGuider", (860, 180), (320, 98), cfg=7.0)
sampler = w.node("TempoAdaptiveSampler", (860, 360), (320, 290), sampler_name="dpmpp_2m")
sched = w.node("BasicScheduler", (860, 730), (320, 106), scheduler="karras", steps=50, denoise=1.0)
sca = w.node("SamplerCustomAdvanced", (1220, 20), (280, 110))
dec = w.node("VAEDecode", (1540, 20), (210, 46))
save = w.node("SaveImage", (1540, 120), (420, 460), filename_prefix="tempo/adaptive_sampler")
w.link(ck, "MODEL", guider, "model")
w.link(pos, "CONDITIONING", guider, "positive")
w.link(neg, "CONDITIONING", guider, "negative")
w.link(ck, "MODEL", sched, "model")
w.link(noise, "NOISE", sca, "noise")
w.link(guider, "GUIDER", sca, "guider")
w.link(sampler, "SAMPLER", sca, "sampler")
w.link(sched, "SIGMAS", sca, "sigmas")
w.link(lat, "LATENT", sca, "latent_image")
w.link(sca, "output", dec, "samples")
w.link(ck, "VAE", dec, "vae")
w.link(dec, "IMAGE", save, "images")
w.dump(OUT / "adaptive_sampler_custom_advanced.json")

# 3. Model patch in front of a plain KSampler
w = WF()
ck, pos, neg, lat = front(w)
patch = w.node("TempoAdaptiveModel", (860, 20), (320, 290))
ks = w.node(
    "KSampler",
    (1220, 20),
    (320, 262),
    seed=42,
    seed__control="fixed",
    steps=50,
    cfg=7.0,
    sampler_name="euler",
    scheduler="normal",
    denoise=1.0,
)
dec = w.node("VAEDecode", (1580, 20), (210, 46))
save = w.node("SaveImage", (1580, 120), (420, 460), filename_prefix="tempo/adaptive_model_patch")
w.link(ck, "MODEL", patch, "model")
w.link(patch, "MODEL", ks, "model")
w.link(pos, "CONDITIONING", ks, "positive")
w.link(neg, "CONDITIONING", ks, "negative")
w.link(lat, "LATENT", ks, "latent_image")
w.link(ks, "LATENT", dec, "samples")
w.link(ck, "VAE", dec, "vae")
w.link(dec, "IMAGE", save, "images")
w.dump(OUT / "adaptive_model_patch.json")

# 4. A calibrated skip profile: AdaptiveDiffusion Calibrate on three prompts, its profile into the KSampler
w = WF()
ck, pos, neg, lat = front(w)
pos2 = w.node(
    "CLIPTextEncode", (390, 660), (420, 130), title="Calibration prompt 2", text="a red vintage car on a coastal road"
)
pos3 = w.node(
    "CLIPTextEncode", (390, 830), (420, 130), title="Calibration prompt 3", text="a bowl of fruit on a wooden table"
)
new = w.node(
    "CLIPTextEncode", (390, 1000), (420, 130), title="Prompt to sample", text="a lighthouse on a cliff at sunset"
)
cal = w.node(
    "TempoAdaptiveCalibrate",
    (860, 20),
    (340, 420),
    seed=42,
    seed__control="fixed",
    steps=20,
    cfg=7.0,
    sampler_name="euler",
    scheduler="normal",
    save_name="tempo/sd15_euler_normal_20",
)
ks = w.node(
    "TempoAdaptiveKSampler",
    (1240, 20),
    (340, 500),
    seed=7,
    seed__control="fixed",
    steps=20,
    cfg=7.0,
    sampler_name="euler",
    scheduler="normal",
)
dec = w.node("VAEDecode", (1620, 20), (210, 46))
save = w.node("SaveImage", (1620, 120), (420, 460), filename_prefix="tempo/adaptive_calibrated")
prev = w.node("PreviewImage", (1620, 640), (420, 300), title="Skip plot")
for c in (pos2, pos3, new):
    w.link(ck, "CLIP", c, "clip")
w.link(ck, "MODEL", cal, "model")
w.link(pos, "CONDITIONING", cal, "positive")
w.link(neg, "CONDITIONING", cal, "negative")
w.link(lat, "LATENT", cal, "latent_image")
w.link(pos2, "CONDITIONING", cal, "positive_2")
w.link(pos3, "CONDITIONING", cal, "positive_3")
w.link(ck, "MODEL", ks, "model")
w.link(new, "CONDITIONING", ks, "positive")
w.link(neg, "CONDITIONING", ks, "negative")
w.link(lat, "LATENT", ks, "latent_image")
w.link(cal, "profile", ks, "profile")
w.link(ks, "LATENT", dec, "samples")
w.link(ck, "VAE", dec, "vae")
w.link(dec, "IMAGE", save, "images")
w.link(ks, "skip_plot", prev, "images")
w.dump(OUT / "adaptive_calibrated.json")

# 5. A run split over two KSamplerAdvanced nodes (Wan 2.2's two experts, SDXL's base and refiner), both models patched:
# the two calls plan the whole run once (split_plan whole_run). One checkpoint on both sides here; put the high- and
# low-noise experts (or base and refiner) in their place.
w = WF()
ck, pos, neg, lat = front(w)
high = w.node("TempoAdaptiveModel", (860, 20), (320, 330), title="AdaptiveDiffusion (first model: steps 0-10)")
low = w.node("TempoAdaptiveModel", (860, 400), (320, 330), title="AdaptiveDiffusion (second model: steps 10-20)")
split = dict(steps=20, cfg=7.0, sampler_name="euler", scheduler="simple", noise_seed=42, noise_seed__control="fixed")
ks1 = w.node(
    "KSamplerAdvanced",
    (1220, 20),
    (320, 334),
    title="KSamplerAdvanced (steps 0-10, leftover noise)",
    add_noise="enable",
    start_at_step=0,
    end_at_step=10,
    return_with_leftover_noise="enable",
    **split,
)
ks2 = w.node(
    "KSamplerAdvanced",
    (1220, 400),
    (320, 334),
    title="KSamplerAdvanced (steps 10-20)",
    add_noise="disable",
    start_at_step=10,
    end_at_step=10000,
    return_with_leftover_noise="disable",
    **split,
)
dec = w.node("VAEDecode", (1580, 20), (210, 46))
save = w.node("SaveImage", (1580, 120), (420, 460), filename_prefix="tempo/adaptive_split_run")
w.link(ck, "MODEL", high, "model")
w.link(ck, "MODEL", low, "model")
w.link(high, "MODEL", ks1, "model")
w.link(low, "MODEL", ks2, "model")
for k in (ks1, ks2):
    w.link(pos, "CONDITIONING", k, "positive")
    w.link(neg, "CONDITIONING", k, "negative")
w.link(lat, "LATENT", ks1, "latent_image")
w.link(ks1, "LATENT", ks2, "latent_image")
w.link(ks2, "LATENT", dec, "samples")
w.link(ck, "VAE", dec, "vae")
w.link(dec, "IMAGE", save, "images")
w.dump(OUT / "adaptive_split_run.json")
import dmd_workflows  # noqa: E402  (this folder is on sys.path when run as a script)

dmd_names = dmd_workflows.write(WF, OUT)
import coop_workflows  # noqa: E402

coop_names = coop_workflows.write(WF, OUT)
import td_workflows  # noqa: E402

td_names = td_workflows.write(WF, OUT)
print(f"wrote {5 + len(dmd_names) + len(coop_names) + len(td_names)} workflows to {OUT}")
