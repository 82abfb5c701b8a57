"""Sample-set metrics of the DMD evaluation on the trained testbed; plain PyTorch, no ComfyUI.

Everything is measured in the feature space of the testbed's classifier (``testbed/classifier.py``,
penultimate layer; trained for the digit class and a 4x4 colour thumbnail, so the features see the
class, the colours and the background):

* ``frechet_distance``: the Frechet distance between Gaussians fitted to two feature sets
  (Heusel et al. 2017, the FID formula) ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``,
  computed in float64 with symmetric eigendecompositions;
* ``class_accuracy``: fraction of samples the classifier assigns to their conditioning class;
* ``within_class_diversity``: mean pairwise Euclidean feature distance between samples of the same
  class, averaged over the classes (a mode-collapsed generator scores low even when its class is
  right);
* ``recall``: improved recall (Kynkaenniemi et al. 2019): the fraction of reference samples that
  fall inside the k-nearest-neighbour balls of the generated samples (a collapsed generator covers
  little of the reference set).

The reference distribution of the DMD evaluation is the teacher's own 50-step CFG samples (what DMD
targets), not the raw data.
"""

from __future__ import annotations

import torch


def _cov(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = f.double()
    mu = f.mean(0)
    d = f - mu
    return mu, d.T @ d / max(1, f.shape[0] - 1)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussian fits of feature sets a [N, D] and b [M, D]."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a: expected feature sets [N, D] and [M, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("a: expected at least 2 samples per set")
    mu_a, s_a = _cov(a)
    mu_b, s_b = _cov(b)
    ra = _sqrtm_psd(s_a)
    cross = _sqrtm_psd(ra @ s_b @ ra)
    fd = (mu_a - mu_b).pow(2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * torch.trace(cross)
    return float(fd.clamp(min=0))


def class_accuracy(pred: torch.Tensor, cond: torch.Tensor) -> float:
    """Fraction of predictions equal to the conditioning class."""
    return float((pred.reshape(-1).cpu() == cond.reshape(-1).cpu()).float().mean())


def within_class_diversity(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise Euclidean feature distance within each class (pairs i != j), averaged over the
    classes that have at least 2 samples."""
    labels = labels.reshape(-1).cpu()
    f = features.double().cpu()
    vals = []
    for c in labels.unique().tolist():
        fc = f[labels == c]
        n = fc.shape[0]
        if n < 2:
            continue
        d = torch.cdist(fc, fc)
        vals.append(float(d.sum() / (n * (n - 1))))
    if not vals:
        raise ValueError("labels: expected at least one class with 2 or more samples")
    return sum(vals) / len(vals)


def recall(generated: torch.Tensor, reference: torch.Tensor, k: int = 5) -> float:
    """Improved recall: fraction of reference features within the k-NN radius (among the generated
    set) of some generated feature."""
    g = generated.double().cpu()
    r = reference.double().cpu()
    k = min(k, g.shape[0] - 1)
    dgg = torch.cdist(g, g)
    radii = dgg.kthvalue(k + 1, dim=1).values  # k-th neighbour, excluding the point itself
    drg = torch.cdist(r, g)
    return float((drg <= radii[None]).any(dim=1).float().mean())


def embed(classifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, predicted classes) of images [N, 3, H, W] in [0, 1]."""
    return classifier.embed(images)


def evaluate(
    features: torch.Tensor,
    pred: torch.Tensor,
    cond: torch.Tensor,
    ref_features: torch.Tensor | None = None,
    ref_cond: torch.Tensor | None = None,
) -> dict:
    """All metrics of one sample set: class accuracy and diversity, and, against a reference set,
    the Frechet distance, recall and the diversity ratio to the reference's."""
    out = {
        "class_acc": class_accuracy(pred, cond),
        "diversity": within_class_diversity(features, cond),
        "n": int(features.shape[0]),
    }
    if ref_features is not None:
        out["fd_vs_teacher"] = frechet_distance(features, ref_features)
        out["recall"] = recall(features, ref_features)
        rc = ref_cond if ref_cond is not None else cond
        out["diversity_ratio"] = out["diversity"] / within_class_diversity(ref_features, rc)
    return out
