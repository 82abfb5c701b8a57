"""Train the flow testbed: a class-conditional rectified-flow DiT on coloured shapes, and the small
classifier that checks its samples.

    OMP_NUM_THREADS=1 python -m comfyui_tempo.testbed.train_flow

CPU, one thread, fixed seeds; writes ``testbed/weights/testbed_flow.safetensors`` (fp16 weights, the
configs, the seeds and the training record in its metadata) and ``testbed/weights/testbed_flow.json``
(the same record, readable). The DiT learns the velocity v = noise - x0 of x = (1 - sigma) x0 + sigma noise
(images x0 in [-1, 1]) with sigma logit-normal (SD3's training density), conditioned on ComfyUI's flow
timestep 1000 sigma and the class (15 % replaced by the null class 10, for classifier-free guidance);
MSE, AdamW, warm-up then cosine, EMA weights. The classifier (``testbed/classifier.py``'s network,
smaller) learns the shape classes of the training images.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..samplers import schedules
from . import shapes
from .classifier import Classifier
from .dit import DiT, param_count
from .train import _lr, _round_fp16, optimizer_step

DATA_CONFIG = dict(seed=shapes.DEFAULT_SEED, size=16, per_class=800, heldout_every=10)
DIT_CONFIG = dict(in_channels=3, image_size=16, patch=2, dim=128, depth=4, heads=4, mlp_ratio=3.0, num_classes=10)
CLASSIFIER_CONFIG = dict(channels=[16, 32, 64], feature_dim=32, num_classes=10, thumb=4)
SAMPLING_CONFIG = dict(shift=3.0, multiplier=1000)


def train_classifier(images, labels, held, held_labels, steps: int = 500, seed: int = 0, batch: int = 64, log=print):
    """Cross-entropy on the training images with a random 1-pixel shift and a little Gaussian noise."""
    torch.manual_seed(seed + 7)
    clf = Classifier(**CLASSIFIER_CONFIG)
    opt = torch.optim.AdamW(clf.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed + 7)
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, 3e-3, warmup=max(1, steps // 20))
        idx = torch.randint(images.shape[0], (batch,), generator=g)
        dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
        x = torch.roll(images[idx], shifts=(dy, dx), dims=(2, 3))
        x = (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        loss = F.cross_entropy(clf(x)[1], labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log is not None and ((step + 1) % 100 == 0 or step + 1 == steps):
            log(f"  classifier step {step + 1}/{steps}  ce {loss.item():.4f}  {time.time() - t0:.0f}s")
    clf.eval().requires_grad_(False)
    _round_fp16(clf)
    acc = float((clf.embed(held)[1] == held_labels).float().mean())
    return clf, dict(steps=steps, batch=batch, seconds=round(time.time() - t0, 1), heldout_accuracy=acc)


def flow_step(net, ema, opt, x0, y, g, sampling, p_uncond: float, ema_decay: float, step: int) -> float:
    """One training step: CFG label dropout (in place, to class 10), sigma = sigmoid(N(0, 1)),
    x = (1 - sigma) x0 + sigma noise, MSE between the network's output and noise - x0 at timestep
    1000 sigma; gradient clipping at 1, AdamW, EMA update (warm decay). Returns the loss."""
    b = x0.shape[0]
    y[torch.rand(b, generator=g) < p_uncond] = 10
    sigma = torch.sigmoid(torch.randn(b, generator=g))
    noise = torch.randn(x0.shape, generator=g)
    s = sigma.view(-1, 1, 1, 1)
    x = (1 - s) * x0 + s * noise
    loss = (net(x, sampling.timestep(sigma), y) - (noise - x0)).pow(2).mean()
    return optimizer_step(net, ema, opt, loss, ema_decay, step)


def train_flow(
    x0: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    seed: int,
    dit_config: dict = DIT_CONFIG,
    batch: int = 32,
    lr: float = 1e-3,
    p_uncond: float = 0.15,
    ema_decay: float = 0.999,
    log=print,
    snapshot=None,
    snapshot_every: int = 0,
):
    """Train the DiT on images x0 [N, 3, H, W] in [-1, 1] with labels [N]; returns (EMA net, record).
    snapshot(step, ema) is called every snapshot_every steps (0: never)."""
    torch.manual_seed(seed + 1)
    net = DiT(**dit_config)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sampling = schedules.Flow(**SAMPLING_CONFIG)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.time()
    running = None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup=max(1, steps // 30))
        idx = torch.randint(x0.shape[0], (batch,), generator=g)
        xb = x0[idx]
        flip = torch.rand(batch, generator=g) < 0.5
        xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
        loss = flow_step(net, ema, opt, xb, labels[idx].clone(), g, sampling, p_uncond, ema_decay, step)
        running = loss if running is None else 0.98 * running + 0.02 * loss
        if log is not None and ((step + 1) % 100 == 0 or step + 1 == steps):
            log(f"  dit step {step + 1}/{steps}  loss(ema) {running:.4f}  {time.time() - t0:.0f}s")
        if snapshot is not None and snapshot_every and (step + 1) % snapshot_every == 0 and step + 1 < steps:
            snapshot(step + 1, ema)
    record = dict(
        steps=steps,
        batch=batch,
        lr=lr,
        p_uncond=p_uncond,
        ema_decay=ema_decay,
        sigma_density="logit-normal(0, 1)",
        augment="horizontal flip",
        seconds=round(time.time() - t0, 1),
        final_loss_smoothed=round(running, 5),
    )
    return ema.eval(), record


def save(path: Path, net: DiT, clf: Classifier, meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {"dit." + k: v.detach().half().contiguous() for k, v in net.state_dict().items()}
    tensors.update({"clf." + k: v.detach().half().contiguous() for k, v in clf.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"testbed_flow": json.dumps(meta)})
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def main(argv=None) -> None:
    from . import trained_flow

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=4000, help="DiT training steps")
    ap.add_argument("--clf-steps", type=int, default=300, help="classifier training steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dit", type=json.loads, default={}, help="DiT config overrides (JSON)")
    ap.add_argument("--out", type=Path, default=trained_flow.WEIGHTS_FILE)
    ap.add_argument("--size", type=int, default=DATA_CONFIG["size"], help="image size (px)")
    ap.add_argument("--snapshot-every", type=int, default=0, help="also write the EMA net every N steps (<out>.stepN)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.time()

    d = {**DATA_CONFIG, "size": args.size}
    images, labels = shapes.build(d["seed"], d["size"], d["per_class"])
    tr, held = shapes.split_indices(images.shape[0], d["heldout_every"])
    print(f"data: {tuple(images.shape)} train {tr.numel()} heldout {held.numel()} ({time.time() - t_start:.0f}s)")

    print("classifier:")
    clf, clf_record = train_classifier(images[tr], labels[tr], images[held], labels[held], args.clf_steps, args.seed)
    print("  ", clf_record)

    print("DiT:")
    dit_config = {**DIT_CONFIG, "image_size": args.size, **args.dit}
    partial = dict(dit_config=dit_config, classifier_config=CLASSIFIER_CONFIG, sampling=SAMPLING_CONFIG, data=d)

    def snapshot(step, ema):
        net_copy = copy.deepcopy(ema)
        _round_fp16(net_copy)
        save(args.out.with_suffix(f".step{step}.safetensors"), net_copy, clf, {**partial, "snapshot_step": step})

    net, dit_record = train_flow(
        images[tr] * 2 - 1,
        labels[tr],
        args.steps,
        args.seed,
        dit_config,
        batch=args.batch,
        lr=args.lr,
        snapshot=snapshot,
        snapshot_every=args.snapshot_every,
    )
    _round_fp16(net)
    print("  ", dit_record)

    meta = dict(
        dit_config=dit_config,
        classifier_config=CLASSIFIER_CONFIG,
        sampling=SAMPLING_CONFIG,
        parameterisation="CONST (rectified flow): x = (1 - sigma) x0 + sigma noise, output v = noise - x0",
        data=d,
        seed=args.seed,
        params=dict(dit=param_count(net), classifier=param_count(clf)),
        train=dict(dit=dit_record, classifier=clf_record, torch=torch.__version__, threads=torch.get_num_threads()),
    )
    tb = trained_flow.FlowTestbed(net.eval().requires_grad_(False), clf, meta)
    meta["class_accuracy_30_steps"] = {
        f"{sch}_cfg{cfg:g}": round(trained_flow.class_accuracy(tb, 30, sch, cfg, seeds=(0, 1, 2, 3)), 3)
        for sch in ("simple", "karras")
        for cfg in (1.0, 4.0)
    }
    meta["curvature_cfg4"] = {
        f"{sch}_{a}_vs_{b}": round(trained_flow.curvature(tb, (a, b), sch)["mean_psnr"], 2)
        for sch in ("karras", "normal")
        for a, b in ((25, 50), (10, 100))
    }
    meta["train"]["total_seconds"] = round(time.time() - t_start, 1)
    save(args.out, net, clf, meta)
    print(f"class accuracy {meta['class_accuracy_30_steps']}; curvature {meta['curvature_cfg4']}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
