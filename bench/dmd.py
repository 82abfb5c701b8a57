"""`comfyui-tempo bench dmd`: DMD / DMD2 one-step generators against their teachers (DMD: Yin et al.,
CVPR 2024; DMD2: Yin et al., NeurIPS 2024).

Cases (every row compares a sample set with the teacher's own samples):

* ``ring-8``: the 2-D ring of 8 Gaussians with its exact denoiser as the real score (the settings
  of ``tests/unit/test_dmd.py``): the teacher's 50-step ODE, the generator at its initialisation,
  the DMD one-step generator and the two control runs (real score only, frozen fake score).
  Modes: ring components holding >= 2.5 % of the samples; SWD: sliced W1 to exact samples of the
  mixture.
* ``gmm-latent``: a Gaussian mixture of 6 components in 4x8x8 = 256 dimensions (latent-shaped, eps
  schedule), same rows and metrics (settings of ``tests/unit/test_dmd.py``).
* ``testbed``: the trained class-conditional testbed, CFG 5 (``testbed/distill.py``):
  the teacher's 50-step Euler CFG samples are the reference (set A); a second, independent teacher
  set (B) gives the noise floor; teacher with 1/2/4 steps, the generator at initialisation (one
  teacher step from pure noise at t=999), the shipped DMD generator and the shipped real-score-only
  control. Metrics in the feature space of the testbed classifier (``testbed/dmd_eval.py``): Frechet
  distance to set A, class accuracy (against the conditioning class), within-class diversity and
  its ratio to set A's, recall; modes = classes with a majority of correctly classified samples;
  SWD on latents. ``wall_s``: one batched sampling call of the whole set.

The testbed rows evaluate the shipped weights; ``--retrain`` distils them again first (1200
iterations each, generator and control). ``--quick`` runs only the testbed case with 20 samples per
class.
"""

from __future__ import annotations

import platform
import time

import torch

from ..training import dmd as dmd_training
from . import dmd_metrics
from .common import print_table, timed, write_json

COLUMNS = [
    "case",
    "method",
    "nfe",
    "modes_covered",
    "modes_total",
    "swd",
    "fd_vs_teacher",
    "class_acc",
    "diversity",
    "diversity_ratio",
    "recall",
    "wall_s",
    "speedup_wall",
]

#: the settings of tests/unit/test_dmd.py (teacher fit, regression pairs, DMD runs, controls)
RING = dict(
    dim=2,
    shape=(2,),
    model_type="ve",
    teacher_hidden=64,
    teacher_fit_steps=3000,
    teacher_batch=512,
    n_eval=2000,
    pairs=4000,
    radius=0.2,
    config=dict(
        model_type="ve",
        real_guidance_scale=1.0,
        dfake_gen_update_ratio=5,
        batch_size=256,
        generator_lr=5e-4,
        fake_lr=2e-3,
        warmup_steps=50,
        sigma_data=1.0,
        seed=0,
    ),
    runs=[
        ("DMD2 one-step (TTUR 5, no regression)", 2500, {}),
        ("DMD one-step + regression 0.25 (L2), TTUR 5", 4000, dict(regression_weight=0.25, regression_loss="l2")),
        ("control: real score only", 1000, dict(use_fake_score=False)),
        ("control: frozen fake score", 1000, dict(train_fake_score=False)),
    ],
)
LATENT = dict(
    dim=256,
    shape=(4, 8, 8),
    model_type="eps",
    modes=6,
    std=0.3,
    teacher_hidden=128,
    teacher_fit_steps=1000,
    teacher_batch=256,
    n_eval=2000,
    pairs=2000,
    radius=0.3 * (16 + 4),
    config=dict(
        model_type="eps",
        real_guidance_scale=1.0,
        dfake_gen_update_ratio=1,
        batch_size=128,
        generator_lr=5e-4,
        fake_lr=2e-3,
        warmup_steps=50,
        sigma_data=1.0,
        seed=0,
        regression_weight=0.25,
        regression_loss="l2",
    ),
    runs=[
        ("DMD one-step + regression 0.25 (L2), 1:1", 2000, dict(ema_decay=0.99)),
        ("control: real score only", 500, dict(regression_weight=0.0, use_fake_score=False)),
        ("control: frozen fake score", 500, dict(regression_weight=0.0, train_fake_score=False)),
    ],
)


def _row(case, method, nfe, **kw) -> dict:
    r = {
        "case": case,
        "method": method,
        "nfe": nfe,
        "modes_covered": None,
        "modes_total": None,
        "swd": None,
        "fd_vs_teacher": None,
        "class_acc": None,
        "diversity": None,
        "wall_s": None,
    }
    r.update(kw)
    return r


# --------------------------------------------------------------------------------------------------
# exact mixtures


def ring_case() -> dict:
    from ..testbed.exact import ring_mixture

    return dict(name="ring-8", gmm=ring_mixture(), means=dmd_metrics.ring_means(), settings=RING)


def gmm_latent_case() -> dict:
    from ..testbed.exact import GaussianMixtureDenoiser

    s = LATENT
    g = torch.Generator().manual_seed(0)
    gmm = GaussianMixtureDenoiser(torch.randn((s["modes"],) + s["shape"], generator=g), s["std"])
    return dict(name="gmm-latent 6 x 4x8x8", gmm=gmm, means=gmm.means.float(), settings=s)


def mixture_rows(case: dict, log=print, steps_scale: float = 1.0) -> list[dict]:
    """Teacher ODE, generator at init, the DMD runs and the controls on an exact mixture (real
    score = the exact denoiser; generator and fake score copied from a network fitted to it)."""
    from ..testbed.toy import MLPDenoiser, fit_denoiser

    s = case["settings"]
    gmm, means, name, shape = case["gmm"], case["means"], case["name"], tuple(s["shape"])
    sched = dmd_training.NoiseSchedule(s["model_type"])
    n = s["n_eval"]
    torch.manual_seed(0)
    teacher = MLPDenoiser(s["dim"], s["teacher_hidden"], 3, sigma_data=1.0)
    t0 = time.perf_counter()
    fit_denoiser(
        teacher,
        gmm,
        lambda k, g: gmm.sample(k, generator=g).reshape(k, -1),
        sched.sigmas,
        steps=max(1, int(s["teacher_fit_steps"] * steps_scale)),
        batch=s["teacher_batch"],
    )
    log(f"[{name}] teacher fitted in {time.perf_counter() - t0:.1f}s")
    ref = gmm.sample(n, generator=torch.Generator().manual_seed(123))
    z = torch.randn((n,) + shape, generator=torch.Generator().manual_seed(7))
    zp = torch.randn((s["pairs"],) + shape, generator=torch.Generator().manual_seed(99))
    pairs = dmd_training.RegressionPairs(zp, dmd_training.teacher_ode_samples(gmm, zp, sched, 999, steps=50))

    def stats(x):
        c = dmd_metrics.mode_coverage(x, means, s["radius"])
        return dict(
            modes_covered=c["covered"],
            modes_total=int(means.shape[0]),
            swd=dmd_metrics.sliced_wasserstein(x, ref, p=1),
            quality=c["quality"],
            mode_tv=c["tv"],
        )

    rows = []
    ode, wall = timed(dmd_training.teacher_ode_samples, gmm, z, sched, 999, steps=50)
    teacher_row = _row(name, "teacher (exact), 50-step Heun ODE", 99, wall_s=wall, **stats(ode))
    rows.append(teacher_row)
    ode_net, wall_net = timed(dmd_training.teacher_ode_samples, teacher, z, sched, 999, steps=50)
    rows.append(_row(name, "teacher network, 50-step Heun ODE", 99, wall_s=wall_net, **stats(ode_net)))
    init = dmd_training.OneStepGenerator(dmd_training.copy_teacher(teacher), sched, 999)
    with torch.no_grad():
        x0, wall0 = timed(init, z)
    rows.append(_row(name, "generator at init (teacher net, 1 step)", 1, wall_s=wall0, **stats(x0)))
    for label, steps, kw in s["runs"]:
        cfg = dmd_training.DMDConfig(**{**s["config"], **kw})
        tr = dmd_training.DMDTrainer(
            gmm,
            dmd_training.copy_teacher(teacher),
            dmd_training.copy_teacher(teacher),
            shape,
            cfg,
            regression_pairs=pairs if cfg.regression_weight > 0 else None,
        )
        t1 = time.perf_counter()
        tr.train(max(1, int(steps * steps_scale)))
        train_s = time.perf_counter() - t1
        # raw weights (the faithful generator); with ema_decay also the EMA weights (the pack's option)
        for use_ema in (False, True) if cfg.ema_decay > 0 else (False,):
            x, wall = timed(tr.sample, n, None, torch.Generator().manual_seed(7), use_ema=use_ema)
            lab = label + (f", EMA {cfg.ema_decay:g}" if use_ema else "")
            r = _row(name, lab, 1, wall_s=wall, train_s=train_s, train_steps=tr.step_count, **stats(x))
            r["swd_vs_teacher_ode"] = r["swd"] / teacher_row["swd"]
            log(
                f"[{name}] {lab}: {r['modes_covered']}/{r['modes_total']} modes, SWD {r['swd']:.4f} "
                f"({r['swd_vs_teacher_ode']:.2f}x the teacher ODE's; {train_s:.0f}s)"
            )
            rows.append(r)
    return rows


# --------------------------------------------------------------------------------------------------
# the trained testbed


def testbed_rows(per_class: int, log=print, generator_file=None, control_file=None) -> tuple[list[dict], dict]:
    from ..testbed import classifier, distill, dmd_eval, trained

    tb = trained.load()
    clf = classifier.load()
    name = "testbed CFG 5"
    za, cond = distill.class_batch(per_class, 1, tb.latent_shape)
    zb, _ = distill.class_batch(per_class, 2, tb.latent_shape)
    lat_a, wall_teacher = timed(distill.teacher_samples, tb, za, cond)
    log(f"[{name}] teacher set A ({za.shape[0]} samples, 50 steps CFG 5): {wall_teacher:.1f}s")
    img_a = tb.decode(lat_a)
    feat_a, pred_a = clf.embed(img_a)
    div_a = dmd_eval.within_class_diversity(feat_a, cond)

    def row(method, nfe, lat, wall, **kw):
        feat, pred = clf.embed(tb.decode(lat))
        e = dmd_eval.evaluate(feat, pred, cond, feat_a, cond)
        per_class_acc = torch.stack([(pred[cond == c] == c).float().mean() for c in range(10)])
        r = _row(
            name,
            method,
            nfe,
            modes_covered=int((per_class_acc > 0.5).sum()),
            modes_total=10,
            swd=dmd_metrics.sliced_wasserstein(lat, lat_a, p=1),
            fd_vs_teacher=e["fd_vs_teacher"],
            class_acc=e["class_acc"],
            diversity=e["diversity"],
            diversity_ratio=e["diversity_ratio"],
            recall=e["recall"],
            wall_s=wall,
            speedup_wall=wall_teacher / wall if wall else None,
            **kw,
        )
        log(
            f"[{name}] {method}: FD {r['fd_vs_teacher']:.3f}  acc {r['class_acc']:.3f}  "
            f"div ratio {r['diversity_ratio']:.3f}  wall {wall:.3f}s"
        )
        return r

    rows = []
    r = row("teacher 50-step Euler CFG 5 (set A vs itself)", 100, lat_a, wall_teacher)
    r.update(fd_vs_teacher=0.0, swd=0.0)
    rows.append(r)
    lat_b, wall_b = timed(distill.teacher_samples, tb, zb, cond)
    rows.append(row("noise floor: teacher 50-step, set B", 100, lat_b, wall_b))
    for steps in (1, 2, 4):
        lat, wall = timed(distill.teacher_samples, tb, zb, cond, steps)
        rows.append(row(f"teacher {steps}-step Euler CFG 5", 2 * steps, lat, wall))
    init = distill.TestbedDenoiser(tb.net, tb.sigmas)
    lat, wall = timed(distill.one_step_samples, init, zb, cond)
    rows.append(row("generator at init (teacher, 1 step at t=999)", 1, lat, wall))
    for label, path in (
        ("DMD one-step (shipped)", generator_file or distill.GENERATOR_FILE),
        ("control: real score only (shipped)", control_file or distill.CONTROL_FILE),
    ):
        try:
            gen, meta = distill.load_generator(path, tb)
        except FileNotFoundError as e:
            log(f"[{name}] {label}: skipped ({e})")
            continue
        lat, wall = timed(distill.one_step_samples, gen, zb, cond, meta["conditioning_timestep"])
        rows.append(
            row(
                label,
                1,
                lat,
                wall,
                train_s=meta["record"].get("train_seconds"),
                train_steps=meta["record"].get("settings", {}).get("steps"),
            )
        )
    return rows, {"teacher_diversity": div_a, "per_class": per_class, "samples": int(cond.numel())}


def add_parser(bench_sub) -> None:
    p = bench_sub.add_parser(
        "dmd", help="DMD one-step generators against their teachers (ring, latent mixture, testbed)"
    )
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--quick", action="store_true", help="only the testbed case (shipped weights), 20 samples per class")
    p.add_argument(
        "--cases", default="", help="comma-separated: ring, gmm, testbed (default all; testbed with --quick)"
    )
    p.add_argument("--per-class", type=int, default=0, help="testbed samples per class (default 50; 20 with --quick)")
    p.add_argument("--retrain", action="store_true", help="distil the testbed generator and control again (~30 min)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")


def main(args) -> int:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads or 1)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    t0 = time.perf_counter()
    quick = args.quick
    rows: list[dict] = []
    cases = set((args.cases or ("testbed" if quick else "ring,gmm,testbed")).split(","))
    if "ring" in cases:
        rows += mixture_rows(ring_case(), log)
    if "gmm" in cases:
        rows += mixture_rows(gmm_latent_case(), log)
    meta = {}
    if "testbed" in cases:
        gen_file = ctl_file = None
        if args.retrain:
            from ..testbed import distill

            gen_file, ctl_file = "out/dmd_onestep_retrained.safetensors", "out/dmd_control_retrained.safetensors"
            distill.main(["--out", gen_file])
            distill.main(["--control", "real_only", "--out", ctl_file])
        tb_rows, meta = testbed_rows(args.per_class or (20 if quick else 50), log, gen_file, ctl_file)
        rows += tb_rows
    result = {
        "rows": rows,
        "meta": {
            **meta,
            "quick": quick,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "seconds": time.perf_counter() - t0,
            "command": "comfyui-tempo bench dmd " + " ".join(getattr(args, "argv", []) or []),
        },
    }
    print()
    table = print_table([{k: ("" if v is None else v) for k, v in r.items()} for r in rows], COLUMNS)
    result["table"] = table
    if args.json:
        write_json(args.json, result)
        print(f"\nwrote {args.json}")
    return 0
