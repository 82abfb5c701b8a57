"""A small classifier of the testbed's coloured digits: the feature extractor and class predictor
of the DMD evaluation (``testbed/dmd_eval.py``), an FID / Inception stand-in that ships with the pack.

    OMP_NUM_THREADS=1 python -m comfyui_tempo.testbed.classifier --train

CPU, one thread, fixed seed, about two minutes; writes ``testbed/weights/classifier.safetensors``
(fp16 weights, config and record in the metadata) and ``testbed/weights/classifier.json`` (the
record: held-out accuracy, training time).

Design. A conv net (32x32 RGB -> 3 stride-2 stages -> global pooling -> a ``feature_dim`` feature
vector, the penultimate layer) with two heads on the features: the 10 digit classes
(cross-entropy) and a 4x4 RGB thumbnail of the input (mean squared error). A pure class objective
learns to ignore colours and backgrounds, since they are drawn independently of the class
(``testbed/data.py``); the thumbnail head keeps them in the features, so a generator that keeps the
digit but collapses colours and backgrounds shows up as a loss of within-class feature diversity.
The classifier is trained on the autoencoder's reconstructions (decode(encode(x))) as well as the
images, because everything it evaluates is decoded from latents.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "classifier.safetensors"
RECORD_FILE = WEIGHTS_DIR / "classifier.json"

CONFIG = dict(channels=[32, 64, 96], feature_dim=64, num_classes=10, thumb=4)


class Classifier(nn.Module):
    """images [B, 3, 32, 32] in [0, 1] -> (features [B, feature_dim], logits [B, 10], thumbnail)."""

    def __init__(self, channels=(32, 64, 96), feature_dim: int = 64, num_classes: int = 10, thumb: int = 4):
        super().__init__()
        self.config = dict(channels=list(channels), feature_dim=feature_dim, num_classes=num_classes, thumb=thumb)
        layers: list[nn.Module] = []
        cin = 3
        for c in channels:
            layers += [
                nn.Conv2d(cin, c, 3, padding=1),
                nn.GroupNorm(8, c),
                nn.SiLU(),
                nn.Conv2d(c, c, 3, stride=2, padding=1),
                nn.GroupNorm(8, c),
                nn.SiLU(),
            ]
            cin = c
        self.body = nn.Sequential(*layers)
        self.feat = nn.Linear(cin * 2, feature_dim)  # mean- and max-pooled channels
        self.head = nn.Linear(feature_dim, num_classes)
        self.thumb_head = nn.Linear(feature_dim, 3 * thumb * thumb)
        self.thumb = thumb

    def features(self, images: torch.Tensor) -> torch.Tensor:
        h = self.body(images * 2 - 1)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return F.silu(self.feat(h))

    def forward(self, images: torch.Tensor):
        f = self.features(images)
        return f, self.head(f), self.thumb_head(f)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, feature_dim], predicted class [N]) of images in [0, 1], in batches."""
        feats, preds = [], []
        for chunk in images.split(batch):
            f = self.features(chunk.float().clamp(0, 1))
            feats.append(f)
            preds.append(self.head(f).argmax(1))
        return torch.cat(feats), torch.cat(preds)


def thumbnail(images: torch.Tensor, size: int = 4) -> torch.Tensor:
    return F.adaptive_avg_pool2d(images, size).flatten(1)


@functools.lru_cache(maxsize=2)
def _load(path: str) -> Classifier:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as f:
        meta = json.loads(f.metadata()["classifier"])
    net = Classifier(**meta["config"])
    net.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    return net.eval().requires_grad_(False)


def load(path: str | Path | None = None) -> Classifier:
    """The shipped classifier (frozen, eval mode; cached)."""
    p = Path(path or WEIGHTS_FILE)
    if not p.is_file():
        raise FileNotFoundError(
            f"path: classifier weights not found at {p}; run `python -m comfyui_tempo.testbed.classifier --train`"
        )
    return _load(str(p))


def read_record(path: str | Path | None = None) -> dict:
    return json.loads(Path(path or RECORD_FILE).read_text())


@torch.no_grad()
def _reconstruct(tb, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([tb.decode(tb.encode(c)).clamp(0, 1) for c in images.split(500)])


def train(
    steps: int = 1500, batch: int = 128, lr: float = 2e-3, seed: int = 0, thumb_weight: float = 10.0, log=print
) -> tuple[Classifier, dict]:
    """Train on the testbed's training split (images and their AE reconstructions); evaluate on the
    held-out split (reconstructions: what the evaluation sees)."""
    from . import trained

    tb = trained.load()
    images, labels = tb.dataset("train")
    held, held_labels = tb.dataset("heldout")
    t0 = time.time()
    recon = _reconstruct(tb, images)
    held_recon = _reconstruct(tb, held)
    x_all = torch.cat([images, recon])
    y_all = torch.cat([labels, labels])
    torch.manual_seed(seed)
    net = Classifier(**CONFIG)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(x_all.shape[0], (batch,), generator=g)
        x, y = x_all[idx], y_all[idx]
        # light augmentation: a 1-pixel random shift
        dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        f, logits, th = net(x)
        loss_c = F.cross_entropy(logits, y)
        loss_t = F.mse_loss(th, thumbnail(x, net.thumb))
        loss = loss_c + thumb_weight * loss_t
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step:5d}  ce {float(loss_c):.4f}  thumb mse {float(loss_t):.5f}  {time.time() - t0:.0f}s")
    net.eval().requires_grad_(False)
    _, pred = net.embed(held_recon)
    _, pred_raw = net.embed(held)
    _, pred_tr = net.embed(recon[:2000])
    with torch.no_grad():
        th_mse = float(F.mse_loss(net(held_recon)[2], thumbnail(held_recon, net.thumb)))
    record = {
        "config": net.config,
        "train": {
            "steps": steps,
            "batch": batch,
            "lr": lr,
            "seed": seed,
            "thumb_weight": thumb_weight,
            "seconds": round(time.time() - t0, 1),
            "threads": torch.get_num_threads(),
        },
        "heldout_accuracy": float((pred == held_labels).float().mean()),
        "heldout_accuracy_raw_images": float((pred_raw == held_labels).float().mean()),
        "train_accuracy": float((pred_tr == labels[:2000]).float().mean()),
        "heldout_thumbnail_mse": th_mse,
        "heldout_count": int(held.shape[0]),
        "data": tb.meta["data"],
    }
    return net, record


def save(net: Classifier, record: dict, path: Path = WEIGHTS_FILE, record_path: Path = RECORD_FILE) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().half().contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(path), metadata={"classifier": json.dumps(record)})
    Path(record_path).write_text(json.dumps(record, indent=2) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="The testbed's evaluation classifier (features + classes).")
    ap.add_argument("--train", action="store_true", help="train and write the weights")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(WEIGHTS_FILE))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.train:
        net, record = train(steps=args.steps, seed=args.seed)
        out = Path(args.out)
        save(net, record, out, out.with_suffix(".json"))
        print(json.dumps({k: v for k, v in record.items() if k != "config"}, indent=1))
        print(f"wrote {out}")
        return 0
    print(json.dumps(read_record(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
