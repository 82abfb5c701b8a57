"""Distil the trained testbed teacher into a one-step generator with DMD2 (Yin et al., NeurIPS 2024).

    OMP_NUM_THREADS=1 python -m comfyui_tempo.testbed.distill --out testbed/weights/dmd_onestep.safetensors
    OMP_NUM_THREADS=1 python -m comfyui_tempo.testbed.distill --control real_only \\
        --out testbed/weights/dmd_control_real_only.safetensors

Full weights of the testbed's eps-UNet (``testbed/trained.py``): the real score is the frozen
teacher with CFG (``--guidance``, default 5, the scale the teacher is sampled with in the
benchmarks, so the generator targets the teacher's own CFG samples), the fake score and the
generator are trainable copies of it (``training.dmd.copy_teacher``); the conditioning list is the
10 digit classes, the unconditional item the null class (10). CPU, one thread, fixed seeds: the same
command gives the same weights.

The generator file is fp16 safetensors written by ``training.run.write_generator``. Its tensors are the
testbed diffusion model's state dict as ComfyUI holds it (``net.<UNet key>``, ``harness/comfy_testbed.py``);
its DMD settings (``samplers.dmd.read_generator``): model type "eps", conditioning timestep 999, timesteps
[999], base "testbed" and the record (the DMDConfig, the command line, the training time and the last
evaluation). The shipped files were written by an earlier version in the flat ``dmd.*`` metadata layout,
which the reader still reads.

``--control real_only`` trains the "real score only" control (``use_fake_score=False``)
with the same settings; ``--control frozen_fake`` keeps the fake score at its
initialisation (``train_fake_score=False``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..samplers import dmd as dmd_sampling
from ..samplers import schedules
from ..training import dmd as dmd_training
from ..training import run as dmd_run
from . import trained

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
GENERATOR_FILE = WEIGHTS_DIR / "dmd_onestep.safetensors"
CONTROL_FILE = WEIGHTS_DIR / "dmd_control_real_only.safetensors"

#: the settings of the shipped generator (see the README's DMD benchmark section)
DEFAULTS = dict(
    steps=1200,
    batch=32,
    generator_lr=2e-4,
    fake_lr=2e-4,
    ratio=3,
    guidance=5.0,
    warmup=50,
    conditioning_timestep=999,
    seed=0,
    ema=0.0,
    regression_weight=0.0,
    pairs_per_class=50,
)
TEACHER_STEPS = 50
TEACHER_CFG = 5.0


class TestbedDenoiser(nn.Module):
    """The testbed's k-diffusion denoiser around a (trainable) copy of its UNet:
    ``forward(x, sigma, cond) -> x0`` exactly as ``Testbed.denoiser`` (x / sqrt(1 + sigma^2) at the
    nearest discrete timestep, eps output), ``cond`` = class indices (10 = null) or None."""

    def __init__(self, net: nn.Module, sigmas: torch.Tensor | None = None):
        super().__init__()
        self.net = net
        self.register_buffer(
            "sigmas", (sigmas if sigmas is not None else schedules.discrete_sigmas()).clone(), persistent=False
        )

    def forward(self, x: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if s.numel() == 1:
            s = s.expand(x.shape[0])
        t = schedules.sigma_to_t(s, self.sigmas).float()
        sb = s.view(-1, 1, 1, 1).to(x.dtype)
        eps = self.net(x / (sb**2 + 1.0) ** 0.5, t, context=trained.onehot(cond, x.shape[0], x.device))
        return x - sb * eps


# --------------------------------------------------------------------------------------------------
# sampling


def class_batch(per_class: int, seed: int, shape=(4, 8, 8), classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise [classes * per_class, *shape] (seeded) and the class of each sample (class-major)."""
    cond = torch.arange(classes).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    return torch.randn((cond.numel(),) + tuple(shape), generator=g), cond


@torch.no_grad()
def teacher_samples(
    tb,
    z: torch.Tensor,
    cond: torch.Tensor,
    steps: int = TEACHER_STEPS,
    cfg: float = TEACHER_CFG,
    scheduler: str = "karras",
    batch: int = 1000,
) -> torch.Tensor:
    """The teacher's own samples: Euler with CFG (one batched call on cond + uncond per step) on
    ComfyUI's ``scheduler`` sigmas, from x = z * sigma_max, as ``bench adaptive`` samples it."""
    sig = schedules.get_sigmas(scheduler, steps, tb.sigmas)
    den = tb.cfg_denoiser(cfg)
    out = [trained.euler(den, zc * sig[0], sig, cc) for zc, cc in zip(z.split(batch), cond.split(batch))]
    return torch.cat(out)


@torch.no_grad()
def one_step_samples(
    denoiser, z: torch.Tensor, cond: torch.Tensor, conditioning_timestep: int = 999, batch: int = 1000
) -> torch.Tensor:
    """One evaluation at the conditioning timestep on pure noise (``OneStepGenerator``)."""
    schedule = dmd_training.NoiseSchedule("eps")
    sigma_c = float(schedule.sigma(conditioning_timestep))
    out = []
    for zc, cc in zip(z.split(batch), cond.split(batch)):
        x = schedule.generator_input(zc, sigma_c)
        out.append(denoiser(x, torch.full((zc.shape[0],), sigma_c), cond=cc))
    return torch.cat(out)


# --------------------------------------------------------------------------------------------------
# weights


def save_generator(path, denoiser: TestbedDenoiser, conditioning_timestep: int, record: dict) -> None:
    """The generator file (``training.run.write_generator``): fp16 weights as ComfyUI holds the testbed
    (``net.<UNet key>``), the record of the run in its DMD settings."""
    sd = dmd_run.generator_state_dict(denoiser.net, prefix="net.", dtype=torch.float16)
    ct = int(conditioning_timestep)
    dmd_run.write_generator(
        path,
        sd,
        {
            "format": "full",
            "model_type": "eps",
            "conditioning_timestep": ct,
            "timesteps": [ct],
            "base": "testbed",
            "record": record,
        },
    )


def write_record(path) -> Path:
    """Write the generator file's DMD settings (``samplers.dmd.read_generator``) as readable JSON beside it."""
    _, info = dmd_sampling.read_generator(path, load_tensors=False)
    out = Path(path).with_suffix(".json")
    out.write_text(json.dumps(info, indent=1) + "\n")
    return out


def load_generator(path, tb=None) -> tuple[TestbedDenoiser, dict]:
    """(the generator as a frozen TestbedDenoiser, its DMD settings (``samplers.dmd.read_generator``: either
    metadata layout) with ``record``)."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        raise FileNotFoundError(f"path: expected an existing .safetensors generator file, got {p}")
    sd, info = dmd_sampling.read_generator(p)
    if info is None:
        raise ValueError(f"path: {p} has no DMD metadata (not a DMD generator file)")
    tb = tb or trained.load()
    net = trained.build_modules(tb.meta)[0]
    net.load_state_dict({k[4:]: v.float() for k, v in sd.items() if k.startswith("net.")})
    den = TestbedDenoiser(net.eval().requires_grad_(False), tb.sigmas)
    info.setdefault("record", {})
    return den, info


# --------------------------------------------------------------------------------------------------
# training


def make_trainer(tb, steps_config: dict, control: str = "none") -> dmd_training.DMDTrainer:
    c = steps_config
    config = dmd_training.DMDConfig(
        model_type="eps",
        conditioning_timestep=int(c["conditioning_timestep"]),
        real_guidance_scale=float(c["guidance"]),
        dfake_gen_update_ratio=int(c["ratio"]),
        batch_size=int(c["batch"]),
        generator_lr=float(c["generator_lr"]),
        fake_lr=float(c["fake_lr"]),
        warmup_steps=int(c["warmup"]),
        use_fake_score=control != "real_only",
        train_fake_score=control != "frozen_fake",
        seed=int(c["seed"]),
        ema_decay=float(c.get("ema", 0.0)),
        regression_weight=float(c.get("regression_weight", 0.0)),
        regression_loss="l2",
    )
    torch.manual_seed(int(c["seed"]))
    gen = TestbedDenoiser(dmd_training.copy_teacher(tb.net), tb.sigmas)
    fake = TestbedDenoiser(dmd_training.copy_teacher(tb.net), tb.sigmas)
    pairs = None
    if config.regression_weight > 0:
        pairs = regression_pairs(
            tb, int(c.get("pairs_per_class", 50)), int(c["seed"]) + 5000, config.conditioning_timestep
        )
    return dmd_training.DMDTrainer(
        tb.denoiser,
        gen,
        fake,
        tb.latent_shape,
        config,
        conditioning=list(range(tb.num_classes)),
        uncond=tb.null_class,
        regression_pairs=pairs,
    )


def regression_pairs(tb, per_class: int, seed: int, conditioning_timestep: int = 999) -> dmd_training.RegressionPairs:
    """DMD1's regression pairs: noise z and the teacher's 50-step Euler CFG sample from the
    generator's input x = generator_input(z, sigma_c) (the same ODE map the generator learns)."""
    z, cond = class_batch(per_class, seed, tb.latent_shape)
    sched = dmd_training.NoiseSchedule("eps")
    sigma_c = float(sched.sigma(conditioning_timestep))
    x = sched.generator_input(z, sigma_c)
    sig = schedules.karras(TEACHER_STEPS, tb.sigma_min, sigma_c)
    with torch.no_grad():
        y = trained.euler(tb.cfg_denoiser(TEACHER_CFG), x, sig, cond)
    return dmd_training.RegressionPairs(z, y, cond)


def _eval(tb, clf, denoiser, ref, t_c: int) -> dict:
    from . import dmd_eval

    z_ref, cond, ref_feat = ref
    # other noise than the reference's (the generator learns the teacher's noise-to-sample map)
    z = torch.randn(z_ref.shape, generator=torch.Generator().manual_seed(20_000))
    with torch.no_grad():
        lat = one_step_samples(denoiser, z, cond, t_c)
        feat, pred = clf.embed(tb.decode(lat))
    return dmd_eval.evaluate(feat, pred, cond, ref_feat, cond)


def reference(tb, clf, per_class: int, seed: int, cache: str | None = None):
    """Noise, classes and classifier features of teacher 50-step CFG samples for in-training
    evaluation (cached in ``cache`` when given)."""
    if cache and Path(cache).is_file():
        d = torch.load(cache, weights_only=True)
        if d["per_class"] == per_class and d["seed"] == seed:
            return d["z"], d["cond"], d["feat"]
    z, cond = class_batch(per_class, seed, tb.latent_shape)
    feat, _ = clf.embed(tb.decode(teacher_samples(tb, z, cond)))
    if cache:
        torch.save({"z": z, "cond": cond, "feat": feat, "per_class": per_class, "seed": seed}, cache)
    return z, cond, feat


def distill(
    settings: dict,
    control: str = "none",
    log=print,
    eval_every: int = 0,
    eval_per_class: int = 30,
    eval_cache: str | None = None,
    tb=None,
    snapshot=None,
) -> tuple[dmd_training.DMDTrainer, dict]:
    """Train; returns the trainer and the record (settings, seconds, losses, evaluations)."""
    tb = tb or trained.load()
    tr = make_trainer(tb, settings, control)
    steps = int(settings["steps"])
    clf = ref = None
    evals = []
    if eval_every:
        from . import classifier

        clf = classifier.load()
        # evaluation noise seeds differ from the training seed
        ref = reference(tb, clf, eval_per_class, 10_000 + int(settings["seed"]), eval_cache)
    t0 = time.time()
    acc: dict = {}
    n_acc: dict = {}
    train_seconds = 0.0
    while tr.step_count < steps:
        ts = time.time()
        out = tr.step()
        train_seconds += time.time() - ts
        for k, v in out.items():
            if k != "step":
                acc[k] = acc.get(k, 0.0) + v
                n_acc[k] = n_acc.get(k, 0) + 1
        k = tr.step_count
        if k % 50 == 0 or k == steps:
            log(
                f"step {k:5d}  "
                + "  ".join(f"{a} {v / n_acc[a]:.4g}" for a, v in sorted(acc.items()))
                + f"  train {train_seconds:.0f}s  wall {time.time() - t0:.0f}s"
            )
            acc, n_acc = {}, {}
        if snapshot is not None:
            snapshot(tr)
        if eval_every and (k % eval_every == 0 or k == steps):
            tr.generator.net.eval()
            with tr.ema_weights():
                e = _eval(tb, clf, tr.generator.net, ref, tr.config.conditioning_timestep)
            e["step"] = k
            evals.append(e)
            log(
                f"eval step {k}: fd {e['fd_vs_teacher']:.3f}  acc {e['class_acc']:.3f}  "
                f"div ratio {e['diversity_ratio']:.3f}  recall {e['recall']:.3f}"
            )
    record = {
        "settings": dict(settings),
        "control": control,
        "config": asdict(tr.config),
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "generator_steps": tr.generator_steps,
        "fake_steps": tr.fake_steps,
        "evals": evals,
    }
    return tr, record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="DMD2 one-step distillation of the trained testbed (CPU).")
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="DMD2 iterations (generator + fake)")
    ap.add_argument("--batch", type=int, default=DEFAULTS["batch"])
    ap.add_argument("--generator-lr", type=float, default=DEFAULTS["generator_lr"])
    ap.add_argument("--fake-lr", type=float, default=DEFAULTS["fake_lr"])
    ap.add_argument("--ratio", type=int, default=DEFAULTS["ratio"], help="fake updates per generator update")
    ap.add_argument("--guidance", type=float, default=DEFAULTS["guidance"], help="CFG scale of the real score")
    ap.add_argument("--warmup", type=int, default=DEFAULTS["warmup"])
    ap.add_argument("--conditioning-timestep", type=int, default=DEFAULTS["conditioning_timestep"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--ema", type=float, default=DEFAULTS["ema"], help="EMA decay of the generator (0 = off)")
    ap.add_argument(
        "--regression-weight",
        type=float,
        default=DEFAULTS["regression_weight"],
        help="DMD1 regression loss weight (L2 on teacher ODE pairs; 0 = off)",
    )
    ap.add_argument("--pairs-per-class", type=int, default=DEFAULTS["pairs_per_class"])
    ap.add_argument("--control", default="none", choices=["none", "real_only", "frozen_fake"])
    ap.add_argument("--out", default=None, help="generator file (.safetensors); default: nothing written")
    ap.add_argument("--eval-every", type=int, default=0, help="evaluate against teacher samples every N steps")
    ap.add_argument("--eval-per-class", type=int, default=30)
    ap.add_argument("--eval-cache", default=None, help="cache file of the evaluation's teacher features")
    ap.add_argument("--snapshot-every", type=int, default=0, help="also write OUT_stepN.safetensors every N steps")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = dict(
        steps=args.steps,
        batch=args.batch,
        generator_lr=args.generator_lr,
        fake_lr=args.fake_lr,
        ratio=args.ratio,
        guidance=args.guidance,
        warmup=args.warmup,
        conditioning_timestep=args.conditioning_timestep,
        seed=args.seed,
        ema=args.ema,
        regression_weight=args.regression_weight,
        pairs_per_class=args.pairs_per_class,
    )

    def snapshot(tr):
        if args.out and args.snapshot_every and tr.step_count % args.snapshot_every == 0:
            p = Path(args.out)
            with tr.ema_weights():
                save_generator(
                    p.with_name(f"{p.stem}_step{tr.step_count}{p.suffix}"),
                    tr.generator.net,
                    args.conditioning_timestep,
                    {"settings": settings, "step": tr.step_count},
                )

    tr, record = distill(
        settings,
        args.control,
        eval_every=args.eval_every,
        eval_per_class=args.eval_per_class,
        eval_cache=args.eval_cache,
        log=lambda s: print(s, flush=True),
        snapshot=snapshot,
    )
    record["command"] = "python -m comfyui_tempo.testbed.distill " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.out:
        with tr.ema_weights():
            save_generator(args.out, tr.generator.net, args.conditioning_timestep, record)
        write_record(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
