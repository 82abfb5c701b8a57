"""`comfyui-tempo train dmd-export`: write a DMD job folder where ComfyUI and the text encoders are, for
`comfyui-tempo train dmd --job` on a cluster that has neither (docs/dmd-distributed.md).

    python -m comfyui_tempo.cli train dmd-export --comfyui /path/to/ComfyUI --checkpoint sd_xl_base_1.0.safetensors \\
        --prompt "a photo of a cat" --prompt "a watercolor of a harbour" --negative "" --width 1024 --height 1024 \\
        --batch 64 --steps 20000 --guidance 8 --generator-lr 5e-7 --fake-lr 5e-7 --out jobs/sdxl

Run it with ComfyUI's Python. The checkpoint is read with ComfyUI's own loader, each prompt encoded by its text
encoder (what CLIP Text Encode does), and the job written by ``nodes/dmd_job.py`` ``export_job`` with the DMD
Trainer node's settings and checks (the same names and defaults as the node's inputs).
"""

from __future__ import annotations

import os


def add_parser(sub) -> None:
    p = sub.add_parser("dmd-export", help="write a DMD job folder (run with ComfyUI's Python)")
    p.add_argument("--out", required=True, help="the job folder")
    p.add_argument("--comfyui", default=os.environ.get("TEMPO_COMFYUI"), help="ComfyUI tree")
    p.add_argument("--checkpoint", required=True, help="the teacher: a name under models/checkpoints or a path")
    p.add_argument("--prompt", action="append", default=[], help="a prompt to distil (repeat: one conditioning each)")
    p.add_argument("--prompts-file", default=None, help="a text file, one prompt a line")
    p.add_argument("--negative", default="", help="the negative prompt of the teacher's CFG")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--batch", type=int, default=1, help="global batch size")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--generator-lr", type=float, default=1e-5)
    p.add_argument("--fake-lr", type=float, default=1e-5)
    p.add_argument("--guidance", type=float, default=1.75)
    p.add_argument("--update-ratio", type=int, default=5)
    p.add_argument("--conditioning-timestep", type=int, default=999)
    p.add_argument("--generator-steps", type=int, default=1)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--regression-weight", type=float, default=0.0)
    p.add_argument("--regression-pairs", default="", help="a pairs file of DMD Regression Pairs (output/dmd_pairs)")
    p.add_argument("--gan-weight", type=float, default=0.0)
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="dmd/generator", help="the generator's name (its title)")
    p.add_argument("--checkpoint-interval", type=int, default=100)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--device", default="cpu", help="where the text encoders run (default cpu)")


def encode(clip, text: str) -> list:
    """A prompt as a CONDITIONING (CLIP Text Encode's steps)."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def main(args) -> int:
    import sys

    import torch

    from . import dmd_job

    prompts = list(args.prompt)
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts += [line.strip() for line in f if line.strip()]
    if not prompts:
        print("train dmd-export: --prompt: give at least one prompt (or --prompts-file)", file=sys.stderr)
        return 2
    try:
        dmd_job.setup_comfyui(args.comfyui, torch.device(args.device))
        import comfy.sd
        import folder_paths

        from ..nodes import dmd_job as node_job

        path = (
            args.checkpoint
            if os.path.isfile(args.checkpoint)
            else folder_paths.get_full_path("checkpoints", args.checkpoint)
        )
        if not path:
            raise FileNotFoundError(f"--checkpoint: {args.checkpoint} is neither a file nor in models/checkpoints")
        with torch.inference_mode():
            model, clip = comfy.sd.load_checkpoint_guess_config(
                path,
                output_vae=False,
                output_clip=True,
                embedding_directory=folder_paths.get_folder_paths("embeddings"),
            )[:2]
            if clip is None:
                raise FileNotFoundError(f"--checkpoint: {path} has no text encoder to encode the prompts with")
            positive = [entry for text in prompts for entry in encode(clip, text)]
            negative = encode(clip, args.negative)
        with torch.inference_mode(False):
            node_job.export_job(
                args.out,
                path,
                model,
                positive,
                negative,
                args.width,
                args.height,
                args.batch,
                args.steps,
                args.generator_lr,
                args.fake_lr,
                args.guidance,
                args.update_ratio,
                args.conditioning_timestep,
                args.generator_steps,
                args.warmup_steps,
                args.regression_weight,
                args.regression_pairs,
                args.gan_weight,
                args.lora_rank,
                args.seed,
                args.name,
                args.checkpoint_interval,
                args.gradient_checkpointing,
            )
    except (ValueError, FileNotFoundError) as e:  # DMDNodeError, RunError are ValueErrors
        print(f"train dmd-export: {e}", file=sys.stderr)
        return 2
    print(f"wrote the job {args.out}: {len(positive)} conditionings, teacher {os.path.basename(path)}")
    return 0
