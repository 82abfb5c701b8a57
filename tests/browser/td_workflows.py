"""The time-decoupled training example workflow (workflows/td_trainer.json), written by make_workflows.py with its
WF builder.

PanGu-Draw's time-decoupled training in ComfyUI: the training image (LoadImage, VAE Encode) trains two
Time-Decoupled Trainers on one SD1.5 checkpoint, a structure LoRA on t >= 500 at 256 px and a texture LoRA on
t < 500 at 512 px; the Time-Decoupled Sampler then samples the structure expert at 256 px and hands off to the
texture expert at 512 px (switch 500, scale 2, the hand-off re-noised at the paper's equal-SNR level, inside the
texture expert's trained range). Both LoRAs are saved to output/loras, where LoraLoader lists
them. The host tier (tests/host/test_host_workflows.py, tests/host/test_host_td_train.py) runs it with tiny
SD1.5 files and checks LoraLoader loads both LoRAs.

Run alone (writes only td_trainer.json): python tests/browser/td_workflows.py object_info.json [OUT_DIR]
"""

SD15 = "v1-5-pruned-emaonly.safetensors"
CAPTION = "a photograph of a red fox sitting in a snowy forest, golden hour, detailed fur, sharp focus"
NEG = ""
IMAGE = "example.png"  # ComfyUI's own input/example.png
SWITCH = 500
EXPERTS = {  # save_name: (timestep_min, timestep_max, pixels)
    "time_decoupled/structure": (SWITCH, 999, 256),
    "time_decoupled/texture": (0, SWITCH - 1, 512),
}


def write(WF, OUT):
    w = WF()
    ck = w.node("CheckpointLoaderSimple", (30, 200), (320, 98), ckpt_name=SD15)
    pos = w.node("CLIPTextEncode", (390, 20), (420, 170), title="Caption of the training image", text=CAPTION)
    neg = w.node("CLIPTextEncode", (390, 250), (420, 120), title="Empty prompt", text=NEG)
    w.link(ck, "CLIP", pos, "clip")
    w.link(ck, "CLIP", neg, "clip")
    img = w.node("LoadImage", (30, 420), (320, 330), title="Training image", image=IMAGE)
    img["widgets_values"].append("image")  # the front end's upload button, as the UI's Save writes LoadImage
    enc = w.node("VAEEncode", (390, 420), (210, 46))
    w.link(img, "IMAGE", enc, "pixels")
    w.link(ck, "VAE", enc, "vae")
    trainers = []
    for i, (save_name, (t_min, t_max, px)) in enumerate(EXPERTS.items()):
        tr = w.node(
            "TempoTimeDecoupledTrainer",
            (860, 20 + 560 * i),
            (360, 520),
            title=("Structure expert (t >= 500, 256 px)" if i == 0 else "Texture expert (t < 500, 512 px)"),
            timestep_min=t_min,
            timestep_max=t_max,
            width=px,
            height=px,
            batch_size=1,
            steps=500,
            learning_rate=1e-4,
            lora_rank=8,
            warmup_steps=0,
            uncond_dropout=0.1,
            seed=0,
            seed__control="fixed",
            save_name=save_name,
            checkpoint_interval=100,
            resume=True,
        )
        w.link(ck, "MODEL", tr, "model")
        w.link(enc, "LATENT", tr, "latents")
        w.link(pos, "CONDITIONING", tr, "positive")
        w.link(neg, "CONDITIONING", tr, "negative")
        w.link(ck, "VAE", tr, "vae")
        curves = w.node("PreviewImage", (1260, 20 + 560 * i), (360, 260), title=f"Loss: {save_name}")
        w.link(tr, "loss_curves", curves, "images")
        trainers.append(tr)
    lat = w.node("EmptyLatentImage", (860, 1140), (320, 110), width=256, height=256, batch_size=1)
    td = w.node(
        "TempoTimeDecoupledSampler",
        (1660, 20),
        (360, 666),
        cfg_structure=7.0,
        cfg_texture=7.0,
        seed=42,
        seed__control="fixed",
        steps=30,
        sampler_name="euler",
        scheduler="normal",
        switch_mode="timestep",
        switch_timestep=SWITCH,
        scale=2.0,
        resize_method="bicubic",
        # the texture expert was trained on t < 500 only: re-noise the hand-off at the switch's own level (equal
        # SNR), not above it (bench decoupled-training: FD 6.9 against 9.9 with the resolution-aware level)
        renoise_level="paper (equal SNR)",
    )
    w.link(trainers[0], "MODEL", td, "model_structure")
    w.link(pos, "CONDITIONING", td, "positive_structure")
    w.link(neg, "CONDITIONING", td, "negative_structure")
    w.link(trainers[1], "MODEL", td, "model_texture")
    w.link(pos, "CONDITIONING", td, "positive_texture")
    w.link(neg, "CONDITIONING", td, "negative_texture")
    w.link(lat, "LATENT", td, "latent_image")
    w.link(ck, "VAE", td, "vae_structure")
    w.link(ck, "VAE", td, "vae_texture")
    dec = w.node("VAEDecode", (2060, 20), (210, 46))
    save = w.node("SaveImage", (2060, 120), (420, 460), filename_prefix="tempo/td_trainer")
    w.link(td, "LATENT", dec, "samples")
    w.link(ck, "VAE", dec, "vae")
    w.link(dec, "IMAGE", save, "images")
    w.dump(OUT / "td_trainer.json")
    return ["td_trainer.json"]


if __name__ == "__main__":  # only this workflow, with make_workflows' builder
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
