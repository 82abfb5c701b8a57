"""The DMD example workflows (workflows/dmd_*.json), written by make_workflows.py with its WF builder.

They use the nodes a user has (CheckpointLoaderSimple, CLIPTextEncode, EmptyLatentImage, VAEDecode...);
the host tier (tests/host/test_host_dmd.py) runs each of them with the testbed standing in for
those nodes.
"""

SDXL = "sd_xl_base_1.0.safetensors"
SD15 = "v1-5-pruned-emaonly.safetensors"
PROMPTS = [
    "a photograph of a red fox sitting in a snowy forest, golden hour",
    "a watercolor painting of a lighthouse on a cliff at dawn",
]
NEG = "blurry, low quality, watermark, text"
GENERATOR = "dmd/generator.safetensors"
PAIRS = "dmd/pairs.safetensors"


def _front(w, ckpt=SD15, n_pos=2):
    ck = w.node("CheckpointLoaderSimple", (30, 200), (320, 98), ckpt_name=ckpt)
    pos = [
        w.node("CLIPTextEncode", (390, 20 + 190 * i), (420, 170), title=f"Prompt {i + 1}", text=PROMPTS[i])
        for i in range(n_pos)
    ]
    neg = w.node("CLIPTextEncode", (390, 20 + 190 * n_pos), (420, 170), title="Negative prompt", text=NEG)
    for p in pos + [neg]:
        w.link(ck, "CLIP", p, "clip")
    cond = pos[0]
    for i, p in enumerate(pos[1:]):
        comb = w.node("ConditioningCombine", (850, 20 + 120 * i), (230, 46), title="Prompt list")
        w.link(cond, "CONDITIONING", comb, "conditioning_1")
        w.link(p, "CONDITIONING", comb, "conditioning_2")
        cond = comb
    return ck, cond, neg


def write(WF, OUT):
    names = []

    # 1. teacher regression pairs (DMD1's regression loss)
    w = WF()
    ck, pos, neg = _front(w)
    pairs = w.node(
        "TempoDMDRegressionPairs",
        (1120, 20),
        (340, 360),
        width=512,
        height=512,
        pairs_per_conditioning=16,
        steps=25,
        guidance=1.75,
        conditioning_timestep=999,
        batch_size=4,
        seed=0,
        seed__control="fixed",
        save_name="dmd/pairs",
    )
    w.link(ck, "MODEL", pairs, "teacher")
    w.link(pos, "CONDITIONING", pairs, "positive")
    w.link(neg, "CONDITIONING", pairs, "negative")
    w.dump(OUT / "dmd_regression_pairs.json")
    names.append("dmd_regression_pairs.json")

    # 2. the trainer: SD1.5 teacher, a list of prompts, one-step generator saved to output/dmd_generators
    w = WF()
    ck, pos, neg = _front(w)
    tr = w.node(
        "TempoDMDTrainer",
        (1120, 20),
        (360, 700),
        width=512,
        height=512,
        batch_size=1,
        steps=2000,
        generator_lr=1e-5,
        fake_lr=1e-5,
        guidance=1.75,
        update_ratio=10,
        conditioning_timestep=999,
        generator_steps=1,
        warmup_steps=500,
        regression_weight=0.0,
        regression_pairs="",
        gan_weight=0.0,
        lora_rank=0,
        seed=0,
        seed__control="fixed",
        save_name="dmd/generator",
        checkpoint_interval=100,
        resume=True,
        gradient_checkpointing=False,
    )
    curves = w.node("PreviewImage", (1520, 20), (420, 300), title="Loss curves")
    samples = w.node("PreviewImage", (1520, 360), (420, 300), title="One-step samples")
    w.link(ck, "MODEL", tr, "teacher")
    w.link(pos, "CONDITIONING", tr, "positive")
    w.link(neg, "CONDITIONING", tr, "negative")
    w.link(ck, "VAE", tr, "vae")
    w.link(tr, "loss_curves", curves, "images")
    w.link(tr, "samples", samples, "images")
    w.dump(OUT / "dmd_trainer.json")
    names.append("dmd_trainer.json")

    # 3. loader + DMD KSampler: one step from the trained file
    w = WF()
    ck, pos, neg = _front(w, n_pos=1)
    ld = w.node(
        "TempoDMDGeneratorLoader",
        (860, 20),
        (340, 170),
        generator_name=GENERATOR,
        conditioning_timestep=-1,
        timesteps="from file",
        strength=1.0,
    )
    lat = w.node("EmptyLatentImage", (860, 260), (320, 110), width=512, height=512, batch_size=4)
    ks = w.node(
        "TempoDMDKSampler", (1240, 20), (320, 200), seed=42, seed__control="fixed", timesteps="from model", cfg=1.0
    )
    dec = w.node("VAEDecode", (1600, 20), (210, 46))
    save = w.node("SaveImage", (1600, 120), (420, 460), filename_prefix="tempo/dmd_one_step")
    w.link(ck, "MODEL", ld, "model")
    w.link(ld, "MODEL", ks, "model")
    w.link(pos, "CONDITIONING", ks, "positive")
    w.link(lat, "LATENT", ks, "latent_image")
    w.link(ks, "LATENT", dec, "samples")
    w.link(ck, "VAE", dec, "vae")
    w.link(dec, "IMAGE", save, "images")
    w.dump(OUT / "dmd_loader_ksampler.json")
    names.append("dmd_loader_ksampler.json")

    # 4. loader + SamplerCustom with the DMD SAMPLER and the loader's SIGMAS
    w = WF()
    ck, pos, neg = _front(w, n_pos=1)
    ld = w.node(
        "TempoDMDGeneratorLoader",
        (860, 20),
        (340, 170),
        generator_name=GENERATOR,
        conditioning_timestep=-1,
        timesteps="from file",
        strength=1.0,
    )
    lat = w.node("EmptyLatentImage", (860, 260), (320, 110), width=512, height=512, batch_size=4)
    sampler = w.node("TempoDMDSampler", (860, 420), (320, 60), timesteps="from model")
    sc = w.node(
        "SamplerCustom", (1240, 20), (320, 440), add_noise=True, noise_seed=42, noise_seed__control="fixed", cfg=1.0
    )
    dec = w.node("VAEDecode", (1600, 20), (210, 46))
    save = w.node("SaveImage", (1600, 120), (420, 460), filename_prefix="tempo/dmd_sampler_custom")
    w.link(ck, "MODEL", ld, "model")
    w.link(ld, "MODEL", sc, "model")
    w.link(pos, "CONDITIONING", sc, "positive")
    w.link(neg, "CONDITIONING", sc, "negative")
    w.link(sampler, "SAMPLER", sc, "sampler")
    w.link(ld, "SIGMAS", sc, "sigmas")
    w.link(lat, "LATENT", sc, "latent_image")
    w.link(sc, "output", dec, "samples")
    w.link(ck, "VAE", dec, "vae")
    w.link(dec, "IMAGE", save, "images")
    w.dump(OUT / "dmd_sampler_custom.json")
    names.append("dmd_sampler_custom.json")

    # 5. DMD2's released SDXL files, loaded the way users load them: the 4-step LoRA with LoraLoaderModelOnly
    #    (timesteps 999,749,499,249) and the 1-step UNet with UNETLoader (conditioning timestep 399)
    w = WF()
    ck, pos, neg = _front(w, ckpt=SDXL, n_pos=1)
    lora = w.node(
        "LoraLoaderModelOnly",
        (860, 20),
        (320, 82),
        lora_name="dmd2_sdxl_4step_lora_fp16.safetensors",
        strength_model=1.0,
    )
    lat = w.node("EmptyLatentImage", (860, 420), (320, 110), width=1024, height=1024, batch_size=1)
    ks4 = w.node(
        "TempoDMDKSampler",
        (1240, 20),
        (320, 200),
        title="DMD2 4-step (LoRA)",
        seed=42,
        seed__control="fixed",
        timesteps="999,749,499,249",
        cfg=1.0,
    )
    unet = w.node(
        "UNETLoader", (860, 160), (320, 82), unet_name="dmd2_sdxl_1step_unet_fp16.bin", weight_dtype="default"
    )
    ks1 = w.node(
        "TempoDMDKSampler",
        (1240, 280),
        (320, 200),
        title="DMD2 1-step (UNet, t=399)",
        seed=42,
        seed__control="fixed",
        timesteps="399",
        cfg=1.0,
    )
    dec4 = w.node("VAEDecode", (1600, 20), (210, 46))
    dec1 = w.node("VAEDecode", (1600, 280), (210, 46))
    save4 = w.node("SaveImage", (1850, 20), (420, 460), filename_prefix="tempo/dmd2_sdxl_4step")
    save1 = w.node("SaveImage", (1850, 520), (420, 460), filename_prefix="tempo/dmd2_sdxl_1step")
    w.link(ck, "MODEL", lora, "model")
    w.link(lora, "MODEL", ks4, "model")
    w.link(unet, "MODEL", ks1, "model")
    for ks, dec, save in ((ks4, dec4, save4), (ks1, dec1, save1)):
        w.link(pos, "CONDITIONING", ks, "positive")
        w.link(lat, "LATENT", ks, "latent_image")
        w.link(ks, "LATENT", dec, "samples")
        w.link(ck, "VAE", dec, "vae")
        w.link(dec, "IMAGE", save, "images")
    w.dump(OUT / "dmd2_sdxl_released.json")
    names.append("dmd2_sdxl_released.json")

    # 6. the trainer's run as a job folder for torchrun (comfyui-tempo train dmd --job): the same front, the
    #    same DMD2 SD1.5 settings, a global batch for several GPUs; the node shows the commands
    w = WF()
    ck, pos, neg = _front(w)
    job = w.node(
        "TempoDMDJobExport",
        (1120, 20),
        (420, 760),
        teacher_checkpoint=SD15,
        job_name="dmd/sd15_job",
        width=512,
        height=512,
        batch_size=32,
        steps=20000,
        generator_lr=1e-5,
        fake_lr=1e-5,
        guidance=1.75,
        update_ratio=10,
        conditioning_timestep=999,
        generator_steps=1,
        warmup_steps=500,
        regression_weight=0.0,
        regression_pairs="",
        gan_weight=0.0,
        lora_rank=0,
        seed=0,
        seed__control="fixed",
        save_name="dmd/sd15_generator",
        checkpoint_interval=500,
        gradient_checkpointing=False,
    )
    w.link(ck, "MODEL", job, "teacher")
    w.link(pos, "CONDITIONING", job, "positive")
    w.link(neg, "CONDITIONING", job, "negative")
    w.dump(OUT / "dmd_job_export.json")
    names.append("dmd_job_export.json")
    return names
