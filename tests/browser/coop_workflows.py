"""The Coop-Diffusion example workflows (workflows/coop_*.json), written by make_workflows.py with its WF builder.

Model A / the structure stage is an SD1.5 checkpoint at 512 px, model B / the texture stage an SDXL
checkpoint at 1024 px, with the nodes a user has (CheckpointLoaderSimple, CLIPTextEncode,
EmptyLatentImage, VAEDecode...). The host tier (tests/host/test_host_coop.py) runs each of them with
the testbed standing in for those nodes: SD1.5 -> the "testbed" model and VAE, SDXL -> "hr",
prompts -> class conditionings, pixel sizes of the pack's nodes divided by 16.

Run alone (writes only coop_*.json): python tests/browser/coop_workflows.py object_info.json [OUT_DIR]
"""

SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
POS = "a photograph of a red fox sitting in a snowy forest, golden hour, detailed fur, sharp focus"
NEG = "blurry, low quality, watermark, text"


def _model(w, ckpt, x, y, tag):
    ck = w.node("CheckpointLoaderSimple", (x, y), (320, 98), title=f"{tag}: checkpoint", ckpt_name=ckpt)
    pos = w.node("CLIPTextEncode", (x + 360, y), (400, 150), title=f"{tag}: positive prompt", text=POS)
    neg = w.node("CLIPTextEncode", (x + 360, y + 190), (400, 150), title=f"{tag}: negative prompt", text=NEG)
    w.link(ck, "CLIP", pos, "clip")
    w.link(ck, "CLIP", neg, "clip")
    return ck, pos, neg


def _save(w, latent_src, latent_out, vae_src, x, y, prefix):
    dec = w.node("VAEDecode", (x, y), (210, 46))
    save = w.node("SaveImage", (x + 250, y), (420, 460), filename_prefix=prefix)
    w.link(latent_src, latent_out, dec, "samples")
    w.link(vae_src, "VAE", dec, "vae")
    w.link(dec, "IMAGE", save, "images")
    return dec, save


def write(WF, OUT):
    names = []

    # 1. Latent Bridge: an SD1.5 image moved into SDXL's latent space at 2x, then refined by SDXL
    w = WF()
    a, pa, na = _model(w, SD15, 30, 20, "SD1.5")
    b, pb, nb = _model(w, SDXL, 30, 420, "SDXL")
    lat = w.node("EmptyLatentImage", (30, 820), (320, 110), width=512, height=512, batch_size=1)
    ks = w.node(
        "KSampler",
        (830, 20),
        (320, 262),
        seed=42,
        seed__control="fixed",
        steps=25,
        cfg=7.0,
        sampler_name="euler",
        scheduler="normal",
        denoise=1.0,
    )
    w.link(a, "MODEL", ks, "model")
    w.link(pa, "CONDITIONING", ks, "positive")
    w.link(na, "CONDITIONING", ks, "negative")
    w.link(lat, "LATENT", ks, "latent_image")
    br = w.node("TempoLatentBridge", (1190, 20), (320, 260), scale=2.0, resize_method="bicubic")
    w.link(ks, "LATENT", br, "samples")
    w.link(a, "VAE", br, "vae_source")
    w.link(b, "VAE", br, "vae_target")
    ref = w.node(
        "KSampler",
        (1550, 20),
        (320, 262),
        title="SDXL refine (denoise 0.45)",
        seed=42,
        seed__control="fixed",
        steps=25,
        cfg=7.0,
        sampler_name="euler",
        scheduler="normal",
        denoise=0.45,
    )
    w.link(b, "MODEL", ref, "model")
    w.link(pb, "CONDITIONING", ref, "positive")
    w.link(nb, "CONDITIONING", ref, "negative")
    w.link(br, "LATENT", ref, "latent_image")
    _save(w, ref, "LATENT", b, 1910, 20, "tempo/coop_latent_bridge")
    w.dump(OUT / "coop_latent_bridge.json")
    names.append("coop_latent_bridge.json")

    # 2. Noisy Latent Bridge: SD1.5 stops half way with leftover noise, SDXL continues at 2x (single-stage SR)
    w = WF()
    a, pa, na = _model(w, SD15, 30, 20, "SD1.5")
    b, pb, nb = _model(w, SDXL, 30, 420, "SDXL")
    lat = w.node("EmptyLatentImage", (30, 820), (320, 110), width=512, height=512, batch_size=1)
    ksa = w.node(
        "KSamplerAdvanced",
        (830, 20),
        (320, 334),
        title="SD1.5: steps 0-10 of 20, leftover noise",
        add_noise="enable",
        noise_seed=42,
        noise_seed__control="fixed",
        steps=20,
        cfg=7.0,
        sampler_name="euler",
        scheduler="normal",
        start_at_step=0,
        end_at_step=10,
        return_with_leftover_noise="enable",
    )
    w.link(a, "MODEL", ksa, "model")
    w.link(pa, "CONDITIONING", ksa, "positive")
    w.link(na, "CONDITIONING", ksa, "negative")
    w.link(lat, "LATENT", ksa, "latent_image")
    nbr = w.node(
        "TempoNoisyLatentBridge",
        (1190, 20),
        (340, 446),
        cfg_source=7.0,
        steps=20,
        end_at_step=10,
        scheduler="normal",
        scale=2.0,
        resize_method="bicubic",
        seed=7,
        seed__control="fixed",
    )
    w.link(ksa, "LATENT", nbr, "samples")
    w.link(a, "MODEL", nbr, "model_source")
    w.link(a, "VAE", nbr, "vae_source")
    w.link(pa, "CONDITIONING", nbr, "positive_source")
    w.link(na, "CONDITIONING", nbr, "negative_source")
    w.link(b, "MODEL", nbr, "model_target")
    w.link(b, "VAE", nbr, "vae_target")
    noise = w.node("DisableNoise", (1570, 20), (210, 26))
    guider = w.node("CFGGuider", (1570, 90), (320, 98), cfg=7.0)
    w.link(b, "MODEL", guider, "model")
    w.link(pb, "CONDITIONING", guider, "positive")
    w.link(nb, "CONDITIONING", guider, "negative")
    sampler = w.node("KSamplerSelect", (1570, 230), (320, 58), sampler_name="euler")
    sca = w.node("SamplerCustomAdvanced", (1930, 20), (280, 110), title="SDXL: the rest of the schedule")
    w.link(noise, "NOISE", sca, "noise")
    w.link(guider, "GUIDER", sca, "guider")
    w.link(sampler, "SAMPLER", sca, "sampler")
    w.link(nbr, "sigmas", sca, "sigmas")
    w.link(nbr, "LATENT", sca, "latent_image")
    _save(w, sca, "output", b, 2250, 20, "tempo/coop_noisy_latent_bridge")
    w.dump(OUT / "coop_noisy_latent_bridge.json")
    names.append("coop_noisy_latent_bridge.json")

    # 3. Coop-Diffusion Sampler: SD1.5 (A, 512 px) fused with SDXL (B, 1024 px) at every step
    w = WF()
    a, pa, na = _model(w, SD15, 30, 20, "A: SD1.5")
    b, pb, nb = _model(w, SDXL, 30, 420, "B: SDXL")
    lat = w.node("EmptyLatentImage", (30, 820), (320, 110), width=512, height=512, batch_size=1)
    cs = w.node(
        "TempoCoopSampler",
        (830, 20),
        (360, 620),
        cfg_a=7.0,
        cfg_b=7.0,
        seed=42,
        seed__control="fixed",
        steps=25,
        sampler_name="euler",
        scheduler="normal",
        d=0.5,
        width_b=1024,
        height_b=1024,
    )
    for tag, (m, p, n) in (("a", (a, pa, na)), ("b", (b, pb, nb))):
        w.link(m, "MODEL", cs, f"model_{tag}")
        w.link(m, "VAE", cs, f"vae_{tag}")
        w.link(p, "CONDITIONING", cs, f"positive_{tag}")
        w.link(n, "CONDITIONING", cs, f"negative_{tag}")
    w.link(lat, "LATENT", cs, "latent_image")
    _save(w, cs, "LATENT", a, 1230, 20, "tempo/coop_sampler")
    w.dump(OUT / "coop_sampler.json")
    names.append("coop_sampler.json")

    # 4. Coop-Diffusion Guider with SamplerCustomAdvanced (dpmpp_2m on A, fusion tapered over the first 60%)
    w = WF()
    a, pa, na = _model(w, SD15, 30, 20, "A: SD1.5")
    b, pb, nb = _model(w, SDXL, 30, 420, "B: SDXL")
    lat = w.node("EmptyLatentImage", (30, 820), (320, 110), width=512, height=512, batch_size=1)
    cg = w.node(
        "TempoCoopGuider",
        (830, 20),
        (360, 480),
        cfg_a=7.0,
        cfg_b=7.0,
        d=0.5,
        d_start=0.0,
        d_end=0.6,
        taper="cosine",
        width_b=1024,
        height_b=1024,
    )
    for tag, (m, p, n) in (("a", (a, pa, na)), ("b", (b, pb, nb))):
        w.link(m, "MODEL", cg, f"model_{tag}")
        w.link(m, "VAE", cg, f"vae_{tag}")
        w.link(p, "CONDITIONING", cg, f"positive_{tag}")
        w.link(n, "CONDITIONING", cg, f"negative_{tag}")
    noise = w.node("RandomNoise", (1230, 20), (320, 82), noise_seed=42, noise_seed__control="fixed")
    sampler = w.node("KSamplerSelect", (1230, 140), (320, 58), sampler_name="dpmpp_2m")
    sched = w.node("BasicScheduler", (1230, 240), (320, 106), scheduler="karras", steps=25, denoise=1.0)
    w.link(a, "MODEL", sched, "model")
    sca = w.node("SamplerCustomAdvanced", (1590, 20), (280, 110))
    w.link(noise, "NOISE", sca, "noise")
    w.link(cg, "GUIDER", sca, "guider")
    w.link(sampler, "SAMPLER", sca, "sampler")
    w.link(sched, "SIGMAS", sca, "sigmas")
    w.link(lat, "LATENT", sca, "latent_image")
    _save(w, sca, "output", a, 1910, 20, "tempo/coop_guider")
    w.dump(OUT / "coop_guider_custom_advanced.json")
    names.append("coop_guider_custom_advanced.json")

    # 5. Time-Decoupled Sampler: SD1.5 lays out the structure down to timestep 500, SDXL adds texture at 2x
    w = WF()
    a, pa, na = _model(w, SD15, 30, 20, "Structure: SD1.5")
    b, pb, nb = _model(w, SDXL, 30, 420, "Texture: SDXL")
    lat = w.node("EmptyLatentImage", (30, 820), (320, 110), width=512, height=512, batch_size=1)
    td = w.node(
        "TempoTimeDecoupledSampler",
        (830, 20),
        (360, 666),
        cfg_structure=7.0,
        cfg_texture=7.0,
        seed=42,
        seed__control="fixed",
        steps=30,
        sampler_name="euler",
        scheduler="normal",
        switch_mode="timestep",
        switch_timestep=500,
        scale=2.0,
        resize_method="bicubic",
    )
    w.link(a, "MODEL", td, "model_structure")
    w.link(pa, "CONDITIONING", td, "positive_structure")
    w.link(na, "CONDITIONING", td, "negative_structure")
    w.link(b, "MODEL", td, "model_texture")
    w.link(pb, "CONDITIONING", td, "positive_texture")
    w.link(nb, "CONDITIONING", td, "negative_texture")
    w.link(lat, "LATENT", td, "latent_image")
    w.link(a, "VAE", td, "vae_structure")
    w.link(b, "VAE", td, "vae_texture")
    _save(w, td, "LATENT", b, 1230, 20, "tempo/coop_time_decoupled")
    w.dump(OUT / "coop_time_decoupled.json")
    names.append("coop_time_decoupled.json")
    return names


if __name__ == "__main__":  # only the coop workflows, with make_workflows' builder
    import runpy
    import sys
    import tempfile
    from pathlib import Path

    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[2] / "workflows"
    with tempfile.TemporaryDirectory() as tmp:  # make_workflows writes the others into a scratch folder
        sys.argv = [sys.argv[0], sys.argv[1], tmp]
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        ns = runpy.run_path(str(Path(__file__).resolve().parent / "make_workflows.py"), run_name="make_workflows")
        print("wrote", write(ns["WF"], out))
