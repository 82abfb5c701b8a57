"""`comfyui-tempo bench decoupled-training`: PanGu-Draw's time-decoupled training on the testbed.

One model fine-tuned on all timesteps at high resolution (``monolithic``) against a structure / texture pair
(``time_decoupled``): the structure expert fine-tuned on t >= T_struct on LOW-resolution data, the texture expert
on t < T_struct on high-resolution data, sampled with the Time-Decoupled Sampler's core
(``bridges.decoupled.time_decoupled_sample``: the structure expert at 32 px, the resolution-aware hand-off to
64 px at T_struct, the texture expert to the end). Every expert is ``training.finetune.FinetuneTrainer``, the
trainer the Time-Decoupled Trainer node runs.

The task. All models start from the testbed "hr" (``testbed/train_hr.py``: the coloured digits at 32 and 64 px in
its autoencoder's space) and are fine-tuned to a new domain with a structure part and a texture part: the digits
mirrored left-right (a change of shape, decided at high noise) and overlaid with fine diagonal stripes of period
8 px at a random phase (a texture that only exists at 64 px: at 32 px it is a 4 px pattern the autoencoder
blurs). The high-resolution data are these images at 64 px; the low-resolution data the same images averaged
down to 32 px.

Equal compute. ``train_cost`` counts latent pixels x samples (steps x batch x H x W; the UNet's FLOPs per sample
are about proportional to its pixels): the monolithic model takes N steps at 16x16 latents; the pair spends half
of that on each expert, so the structure expert gets 2N steps at 8x8 and the texture expert N/2 steps at 16x16.
``time_decoupled_paper_level`` is the same pair with the hand-off re-noised at the paper's equal-SNR level instead
of the default resolution-aware level (2x the switch's sigma after the 2x upscale, above the texture expert's
trained range). ``time_decoupled_hr`` is the control: the same pair with the structure expert trained at high resolution
(N/2 steps each), which tells the timestep split from the resolution saving. ``base`` is the model before
fine-tuning; ``data`` as many training images of the target domain as there are samples, through the
autoencoder (what a perfect generator would score at this sample size: the floor). ``sample_cost`` is the
sampling's network cost relative to the monolithic model's (NFE x latent pixels; the structure expert's steps
run at 32 px).

Scores, against the held-out 10 % of the target domain (never trained on): ``fd``, the Frechet distance of the
evaluation classifier's features (``testbed/classifier.py``, ``testbed/dmd_eval.py``), ``class_acc``, the
fraction of samples the classifier reads as their class, both on the images mirrored back and averaged to 32 px
(the classifier's input), and ``texture``, the 64 px images' high-pass energy over the held-out images' (1 is
right; the stripes are most of it).
"""

from __future__ import annotations

import copy
import math
import platform
import time

import torch
import torch.nn.functional as F

from ..bridges import core, decoupled
from ..samplers import kdiff, schedules
from ..training import finetune, lora
from .common import print_table, write_json
from .routes import coupled_noise

COLUMNS = [
    "method",
    "t_struct",
    "train_cost",
    "train_cost_ratio",
    "fd",
    "class_acc",
    "texture",
    "sample_cost",
    "train_s",
    "setting",
]
STRIPE_PERIOD = 8
STRIPE_DEPTH = 0.35
NULL = 10


def add_parser(bench_sub) -> None:
    p = bench_sub.add_parser(
        "decoupled-training",
        help="time-decoupled training: a structure / texture expert pair against one model, at equal train cost",
    )
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--quick", action="store_true", help="a tiny configuration (a smoke test, well under a minute)")
    p.add_argument("--steps", type=int, default=0, help="the monolithic model's steps N (default 300; quick 8)")
    p.add_argument("--batch", type=int, default=0, help="batch size of every expert (default 32; quick 4)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lora-rank", type=int, default=0, help="0: full weights (default); >0: LoRA experts")
    p.add_argument("--t-struct", default="", help="comma-separated T_struct sweep (default 250,500,750; quick 500)")
    p.add_argument("--per-class", type=int, default=0, help="samples per class (default 20; quick 1)")
    p.add_argument("--sample-steps", type=int, default=0, help="euler steps (default 20; quick 4)")
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quiet", action="store_true")


# ----------------------------------------------------------------------------- the task
def stripes(n: int, size: int, generator: torch.Generator, period: int = STRIPE_PERIOD) -> torch.Tensor:
    """[n, 1, size, size] diagonal stripes in [0, 1] of ``period`` pixels, one random phase per image."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    phase = torch.rand(n, generator=generator) * period
    u = (xx + yy)[None].float() + phase[:, None, None]
    return (0.5 + 0.5 * torch.cos(2 * math.pi * u / period))[:, None]


def target_domain(images: torch.Tensor, seed: int) -> torch.Tensor:
    """The fine-tuning domain: mirrored left-right, darkened along fine diagonal stripes."""
    g = torch.Generator().manual_seed(seed)
    return images.flip(-1) * (1 - STRIPE_DEPTH * stripes(images.shape[0], images.shape[-1], g))


def downscale(images: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(images, size=(size, size), mode="area")


def high_pass_energy(images: torch.Tensor) -> float:
    """Mean squared difference to a 5x5 box blur (per pixel and channel)."""
    blur = F.avg_pool2d(F.pad(images, (2, 2, 2, 2), mode="replicate"), 5, 1)
    return float((images - blur).pow(2).mean())


class Task:
    """The testbed "hr", the evaluation classifier, the target domain's latents at both sizes and the held-out set."""

    def __init__(self, quick: bool, seed: int, log=print):
        from ..testbed import classifier as classifier_mod
        from ..testbed import data as data_mod
        from ..testbed import trained
        from ..testbed.vaes import TestbedVAE

        self.tb = trained.load(name="hr")
        self.vae = TestbedVAE(self.tb, "testbed-hr")
        self.clf = classifier_mod.load()
        self.sched = core.ModelSchedule.sd_discrete(name="sd")
        images, labels = self.tb.dataset("all")
        train, held = data_mod.split_indices(images.shape[0], self.tb.meta["data"]["heldout_every"])
        if quick:
            train, held = train[:96], held[:40]
        target = target_domain(images, seed=1000 + seed)
        self.held_images, self.held_labels = target[held], labels[held]
        t0 = time.perf_counter()
        with torch.no_grad():
            hr = target[train]
            self.lat_hr = torch.cat([self.tb.encode(c) for c in hr.split(256)])
            self.lat_lr = torch.cat([self.tb.encode(downscale(c, 32)) for c in hr.split(256)])
        self.labels = labels[train]
        self.train_images = target[train]
        self.ref_feat, self.ref_pred = self.embed(self.held_images)
        self.ref_texture = high_pass_energy(self.held_images)
        log(
            f"data: {len(train)} train / {len(held)} held-out images, latents {tuple(self.lat_hr.shape[1:])} and "
            f"{tuple(self.lat_lr.shape[1:])} ({time.perf_counter() - t0:.0f}s)"
        )

    def embed(self, images64: torch.Tensor):
        """Classifier features and classes of 64 px target-domain images (mirrored back, averaged to 32 px)."""
        return self.clf.embed(downscale(images64.flip(-1).clamp(0, 1), 32))

    def score(self, images64: torch.Tensor, cond: torch.Tensor) -> dict:
        from ..testbed import dmd_eval

        feat, pred = self.embed(images64)
        return {
            "fd": dmd_eval.frechet_distance(feat, self.ref_feat),
            "class_acc": dmd_eval.class_accuracy(pred, cond),
            "texture": high_pass_energy(images64.clamp(0, 1)) / self.ref_texture,
        }


# ----------------------------------------------------------------------------- training and sampling
def train_expert(task: Task, latents, t_range, steps: int, args, seed: int):
    """A ``FinetuneTrainer`` run from the testbed's UNet (full copy or LoRA); returns (denoiser, trainer, seconds)."""
    from ..testbed.distill import TestbedDenoiser

    base = task.tb.net
    if args.lora_rank > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = lora.lora_copy(base, args.lora_rank)
    else:
        net = copy.deepcopy(base).requires_grad_(True)
    den = TestbedDenoiser(net)
    cfg = finetune.FinetuneConfig(
        model_type="eps",
        timestep_min=t_range[0],
        timestep_max=t_range[1],
        batch_size=args.batch,
        lr=args.lr,
        warmup_steps=max(1, steps // 20),
        uncond_dropout=0.15,
        lora_rank=args.lora_rank,
        seed=seed,
    )
    trainer = finetune.FinetuneTrainer(
        den, latents, cfg, conditioning=list(range(10)), cond_index=task.labels, uncond=NULL
    )
    t0 = time.perf_counter()
    trainer.train(steps)
    den.eval().requires_grad_(False)
    return den, trainer, time.perf_counter() - t0


def cfg_fn(den, scale: float):
    """x0 with classifier-free guidance in one batched call (cond, then the null class)."""

    def fn(x, sigma, cond=None):
        b = x.shape[0]
        s = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
        s = s.expand(b) if s.numel() == 1 else s
        out = den(torch.cat([x, x]), torch.cat([s, s]), cond=torch.cat([cond, torch.full_like(cond, NULL)]))
        c, u = out.chunk(2)
        return u + scale * (c - u)

    return fn


class Sampling:
    def __init__(self, task: Task, per_class: int, steps: int, cfg: float, seed: int):
        self.task, self.cfg = task, cfg
        self.cond = torch.arange(10).repeat(per_class)
        self.sigmas = schedules.get_sigmas("karras", steps)
        self.noise_hr, self.noise_lr = coupled_noise((self.cond.numel(), 4, 8, 8), seed=5000 + seed)

    @torch.no_grad()
    def single(self, den) -> torch.Tensor:
        x = kdiff.sample_euler(
            cfg_fn(den, self.cfg), self.noise_hr * self.sigmas[0], self.sigmas, extra_args={"cond": self.cond}
        )
        self.cost = 1.0
        return self.task.tb.decode(x)

    @torch.no_grad()
    def pair(self, structure, texture, t_struct: int, structure_lr: bool, renoise: str = "resolution") -> torch.Tensor:
        extra = {"cond": self.cond}
        common = dict(switch_timestep=t_struct, extra_structure=extra, extra_texture=extra)
        if structure_lr:  # the structure expert at 32 px, the resolution-aware hand-off to 64 px
            r = decoupled.time_decoupled_sample(
                cfg_fn(structure, self.cfg),
                cfg_fn(texture, self.cfg),
                self.noise_lr * self.sigmas[0],
                self.sigmas,
                self.task.sched,
                self.task.sched,
                vae_structure=self.task.vae,
                vae_texture=self.task.vae,
                size=(64, 64),
                filter="bicubic",
                noise=self.noise_hr,
                renoise=renoise,
                **common,
            )
        else:
            r = decoupled.time_decoupled_sample(
                cfg_fn(structure, self.cfg),
                cfg_fn(texture, self.cfg),
                self.noise_hr * self.sigmas[0],
                self.sigmas,
                self.task.sched,
                **common,
            )
        n = len(self.sigmas) - 1
        self.cost = (r.nfe_structure * (0.25 if structure_lr else 1.0) + r.nfe_texture) / n
        return self.task.tb.decode(r.x)


# ----------------------------------------------------------------------------- the benchmark
def run(args) -> dict:
    quick = args.quick
    log = (lambda *a, **k: None) if args.quiet else print
    args.steps = args.steps or (8 if quick else 300)
    args.batch = args.batch or (4 if quick else 32)
    per_class = args.per_class or (1 if quick else 20)
    sample_steps = args.sample_steps or (4 if quick else 20)
    sweep = [int(t) for t in (args.t_struct or ("500" if quick else "250,500,750")).split(",") if t.strip()]
    for t in sweep:
        finetune.expert_ranges(t)  # a clear error for a T_struct outside 1..999
    t_all = time.perf_counter()
    task = Task(quick, args.seed, log)
    smp = Sampling(task, per_class, sample_steps, args.cfg, args.seed)
    n, b = args.steps, args.batch
    hr_shape, lr_shape = task.lat_hr.shape[1:], task.lat_lr.shape[1:]
    budget = finetune.train_cost(n, b, hr_shape)
    rows = []

    def add(method, t_struct, cost, images, train_s, setting, cond=None, sample=True):
        row = {
            "method": method,
            "t_struct": t_struct,
            "train_cost": cost,
            "train_cost_ratio": cost / budget,
            **task.score(images, smp.cond if cond is None else cond),
            "sample_cost": smp.cost if sample else None,
            "train_s": round(train_s, 1),
            "setting": setting,
        }
        rows.append(row)
        log(
            f"  {method:18s} T_struct {t_struct!s:>4}: fd {row['fd']:.2f} class_acc {row['class_acc']:.3f} "
            f"texture {row['texture']:.2f} cost {row['train_cost_ratio']:.2f} ({train_s:.0f}s training)"
        )

    from ..testbed.distill import TestbedDenoiser

    # the floor: per_class training images of each class (never the held-out ones) through the autoencoder
    pick = torch.cat([(task.labels == c).nonzero().flatten()[:per_class] for c in range(10)])
    with torch.no_grad():
        floor = task.tb.decode(task.tb.encode(task.train_images[pick]))
    add("data", None, 0, floor, 0.0, "training images through the autoencoder", task.labels[pick], sample=False)
    base = TestbedDenoiser(task.tb.net)
    add("base", None, 0, smp.single(base), 0.0, "testbed hr, not fine-tuned")
    mono, tr, secs = train_expert(task, task.lat_hr, (0, 999), n, args, args.seed)
    add("monolithic", None, finetune.train_cost(n, b, hr_shape), smp.single(mono), secs, f"t 0..999, 64 px, {n} steps")
    for t in sweep:
        rng = finetune.expert_ranges(t)
        n_s, n_t = 2 * n, max(1, n // 2)
        s_den, _, s_secs = train_expert(task, task.lat_lr, rng["structure"], n_s, args, args.seed + 1)
        t_den, _, t_secs = train_expert(task, task.lat_hr, rng["texture"], n_t, args, args.seed + 2)
        cost = finetune.train_cost(n_s, b, lr_shape) + finetune.train_cost(n_t, b, hr_shape)
        add(
            "time_decoupled",
            t,
            cost,
            smp.pair(s_den, t_den, t, structure_lr=True),
            s_secs + t_secs,
            f"structure t>={t} 32 px {n_s} steps; texture t<{t} 64 px {n_t} steps",
        )
        add(
            "time_decoupled_paper_level",
            t,
            cost,
            smp.pair(s_den, t_den, t, structure_lr=True, renoise="paper"),
            s_secs + t_secs,
            "the same pair; hand-off re-noised at the paper's equal-SNR level (inside the texture expert's range)",
        )
        if t == 500 or len(sweep) == 1:
            n_h = max(1, n // 2)
            h_den, _, h_secs = train_expert(task, task.lat_hr, rng["structure"], n_h, args, args.seed + 1)
            cost = finetune.train_cost(n_h, b, hr_shape) + finetune.train_cost(n_t, b, hr_shape)
            add(
                "time_decoupled_hr",
                t,
                cost,
                smp.pair(h_den, t_den, t, structure_lr=False),
                h_secs + t_secs,
                f"control: structure t>={t} 64 px {n_h} steps; texture as above",
            )
    meta = {
        "steps_monolithic": n,
        "batch": b,
        "lr": args.lr,
        "lora_rank": args.lora_rank,
        "t_struct": sweep,
        "samples": int(smp.cond.numel()),
        "sample_steps": sample_steps,
        "cfg": args.cfg,
        "sampler": "euler karras",
        "heldout": int(task.held_images.shape[0]),
        "train_cost_unit": "latent pixels x samples (steps x batch x H x W)",
        "budget": budget,
        "quick": quick,
        "total_s": round(time.perf_counter() - t_all, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    return {"rows": rows, "meta": meta}


def main(args) -> int:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    result["command"] = "comfyui-tempo bench " + " ".join(getattr(args, "argv", []) or [])
    print_table([{k: ("" if v is None else v) for k, v in r.items()} for r in result["rows"]], COLUMNS)
    if args.json:
        write_json(args.json, result)
    return 0
