"""`comfyui-tempo train dmd`: DMD distillation on one or many processes (torchrun), outside ComfyUI.

    torchrun --standalone --nproc-per-node 2 -m comfyui_tempo.cli train dmd --testbed --steps 20 --out DIR
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id RUN \\
        -m comfyui_tempo.cli train dmd --job JOB --comfyui /path/to/ComfyUI --strategy fsdp --out DIR

The training is the pack's: ``training.trainer.DMDTrainer`` (the step) and ``training.run.DMDRun`` (the loop),
the DMD Trainer node's code, run by ``training.distributed`` (DDP or FSDP, checkpoints through
``torch.distributed.checkpoint``). What it trains: ``--testbed`` (the bundled testbed, no ComfyUI: the whole
path on a CPU with gloo) or ``--job`` (a job folder: the settings, the encoded conditionings and the teacher's
checkpoint file, loaded with a ComfyUI tree's own loader, ``--comfyui`` or $TEMPO_COMFYUI).

OUT holds ``checkpoint/`` (resumed when the command runs again: "resumed from step N"), ``generator.safetensors``
(the file DMD Generator Loader reads), ``log.jsonl`` (one line per status: step, losses, it/s, ETA) and
``losses.png``. Rank 0 prints the progress.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("dmd", help="DMD distillation on one or many processes (torchrun, DDP / FSDP)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--testbed", action="store_true", help="the bundled testbed (no ComfyUI needed)")
    src.add_argument("--job", help="a job folder (written by the DMD Trainer node's export: training.job)")
    p.add_argument("--out", required=True, help="the run's folder: checkpoint/, generator.safetensors, log, plot")
    p.add_argument("--steps", type=int, default=None, help="total steps (a resumed run continues to it)")
    p.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp", help="how the networks are spread")
    p.add_argument("--batch", type=int, default=None, help="global batch size (split over the processes)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint interval in steps")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    p.add_argument("--fresh", action="store_true", help="start over even when OUT has a checkpoint")
    p.add_argument("--seed", type=int, default=None, help="the run's seed (testbed; a job keeps its own)")
    p.add_argument("--comfyui", default=os.environ.get("TEMPO_COMFYUI"), help="ComfyUI tree (for --job)")
    p.add_argument("--teacher", default=None, help="the teacher's checkpoint file (default: the job's reference)")
    p.add_argument(
        "--mixed-precision", choices=("no", "bf16"), default=None, help="bf16 autocast on CUDA (default: the job's)"
    )
    p.add_argument(
        "--gradient-checkpointing", action="store_true", default=None, help="activation checkpointing (less memory)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per process on a CPU")


def _peak_bytes(device) -> float:
    """This process's peak memory: CUDA's max allocated on a GPU, else the peak resident set size."""
    import torch

    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0  # Linux: KiB


def _peak_kind(device) -> str:
    return "CUDA max allocated" if device.type == "cuda" else "peak RSS, the largest process"


def _all_max(d, value: float) -> float:
    import torch
    import torch.distributed as dist

    if not d.initialized:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device if d.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _print(d, *a) -> None:
    if d.main:
        print(*a, flush=True)


def main(args) -> int:
    import torch

    from ..training import distributed
    from ..training.plot import plot_losses
    from ..training.run import RunError

    if args.device in (None, "cpu"):
        torch.set_num_threads(max(1, int(args.threads)))
    d = distributed.init(args.device)
    out = Path(args.out)
    try:
        if args.testbed:
            from ..testbed import dmd_dist

            settings = {}
            if args.batch is not None:
                settings["batch"] = args.batch
            if args.seed is not None:
                settings["seed"] = args.seed
            trainer, save = dmd_dist.build(settings, d.device, args.mixed_precision, args.gradient_checkpointing)
            steps = args.steps if args.steps is not None else 20
            every = args.checkpoint_every or 10
            name = "testbed"
        else:
            from . import dmd_job

            trainer, save, job = dmd_job.build(
                args.job,
                args.comfyui,
                d.device,
                batch=args.batch,
                teacher=args.teacher,
                mixed_precision=args.mixed_precision,
                gradient_checkpointing=args.gradient_checkpointing,
            )
            steps = args.steps if args.steps is not None else int(job["steps"])
            every = args.checkpoint_every or int(job.get("checkpoint_interval", 100))
            name = job.get("name", "generator")
        distributed.wrap(trainer, d, args.strategy)
        run = distributed.DistributedRun(trainer, out, d, every, advice="use --fresh or another --out")
        if d.main:
            out.mkdir(parents=True, exist_ok=True)
        d.barrier()
        if not args.fresh and run.resume():
            _print(d, f"resumed from step {run.resumed_from}")
        _print(
            d,
            f"DMD: {d.world} process(es), {args.strategy if d.world > 1 else 'one process'}, device {d.device.type}, "
            f"global batch {trainer.config.batch_size}, steps {trainer.step_count} -> {steps}",
        )
        t0, start = time.monotonic(), trainer.step_count
        logf = open(out / "log.jsonl", "a") if d.main else None

        def on_status(text):
            if not d.main:
                return
            k = trainer.step_count
            rate = (k - start) / max(1e-9, time.monotonic() - t0)
            eta = (steps - k) / rate if rate > 0 else float("nan")
            last = {key: v[-1][1] for key, v in run.history.items() if v}
            print(f"{text} ETA {eta:.0f}s", flush=True)
            logf.write(json.dumps({"step": k, "it_s": round(rate, 4), "eta_s": round(eta, 1), **last}) + "\n")
            logf.flush()

        run.train(steps, on_status=on_status)
        seconds = (time.monotonic() - t0) / max(1, trainer.step_count - start)
        peak = _all_max(d, _peak_bytes(d.device))
        state = distributed.state_bytes(trainer, getattr(trainer, "teacher_module", None))
        path = out / "generator.safetensors"
        run.save_generator(path, title=name, **save)
        if d.main:
            from PIL import Image

            img = plot_losses(run.history)
            Image.fromarray((img * 255).round().astype("uint8")).save(out / "losses.png")
            logf.close()
            print(f"wrote {path} ({trainer.step_count} steps, {trainer.generator_steps} generator updates)", flush=True)
            mib = {k: round(v / 2**20, 2) for k, v in state.items()}
            print(f"per process: {seconds:.3f} s/step, peak memory {peak / 2**20:.0f} MiB ({_peak_kind(d.device)})")
            print(f"state of rank 0 (MiB): {mib}", flush=True)
            with open(out / "log.jsonl", "a") as f:
                f.write(
                    json.dumps(
                        {
                            "done": trainer.step_count,
                            "s_per_step": round(seconds, 4),
                            "peak_mib": round(peak / 2**20, 1),
                            "state_mib": mib,
                            "processes": d.world,
                            "strategy": args.strategy if d.world > 1 else "one",
                            "device": d.device.type,
                        }
                    )
                    + "\n"
                )
    except (RunError, ValueError, FileNotFoundError) as e:
        if d.main:
            print(f"train dmd: {e}", file=sys.stderr, flush=True)
        d.close(wait=False)
        return distributed.exit_job(d, 2)
    d.close()
    return distributed.exit_job(d, 0)
