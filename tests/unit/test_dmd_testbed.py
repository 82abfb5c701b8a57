"""DMD on the trained testbed: the evaluation metrics, the shipped classifier,
the shipped one-step generator against freshly sampled teacher sets, the real-score-only control's
diversity failure, and a smoke training run. One thread, fixed seeds.

The shipped weights are made by
``python -m comfyui_tempo.testbed.classifier --train`` and
``python -m comfyui_tempo.testbed.distill --out testbed/weights/dmd_onestep.safetensors``
(``--control real_only --out testbed/weights/dmd_control_real_only.safetensors`` for the control).
"""

import time

import pytest
import torch

from comfyui_tempo.testbed import classifier, distill, dmd_eval, trained

torch.set_num_threads(1)

PER_CLASS = 20  # 200 samples per set: the test's teacher set costs 50 x 2 x 200 network rows


def _need(path):
    if not path.is_file():
        pytest.skip(f"{path.name} not built (see the module docstring)")


# ------------------------------------------------------------------------------------------------
# metrics


def test_frechet_distance_exact_values():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert dmd_eval.frechet_distance(a, a) < 1e-8
    # same covariance, shifted mean: FD = |shift|^2
    shift = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    assert abs(dmd_eval.frechet_distance(a, a + shift) - 5.0) < 1e-6
    # N(0, I) vs N(0, 4 I) in 3-D: tr(I + 4I - 2 * 2I) = 3 (up to sampling error)
    b = 2 * torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert abs(dmd_eval.frechet_distance(a, b) - 3.0) < 0.3
    with pytest.raises(ValueError, match="^a"):
        dmd_eval.frechet_distance(a, torch.randn(10, 2))


def test_diversity_accuracy_recall():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0], [10.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # class 0: one pair at distance 5; class 1: identical pair at 0 -> mean 2.5
    assert abs(dmd_eval.within_class_diversity(f, labels) - 2.5) < 1e-9
    assert dmd_eval.class_accuracy(torch.tensor([0, 1, 1, 1]), labels) == 0.75
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(500, 2, generator=g)
    assert dmd_eval.recall(torch.randn(500, 2, generator=g), ref) > 0.9
    collapsed = 0.05 * torch.randn(500, 2, generator=g)
    assert dmd_eval.recall(collapsed, ref) < 0.2


# ------------------------------------------------------------------------------------------------
# the classifier


def test_classifier_heldout_accuracy():
    _need(classifier.WEIGHTS_FILE)
    tb = trained.load()
    clf = classifier.load()
    rec = classifier.read_record()
    images, labels = tb.dataset("heldout")
    with torch.no_grad():
        recon = tb.decode(tb.encode(images)).clamp(0, 1)
    feat, pred = clf.embed(recon)
    acc = float((pred == labels).float().mean())
    assert feat.shape == (images.shape[0], clf.config["feature_dim"])
    assert acc >= 0.95
    assert abs(acc - rec["heldout_accuracy"]) < 0.01  # the fp16 file reproduces its record
    # the features see colour: the same digits recoloured move in feature space
    f2, p2 = clf.embed(recon[:, [2, 0, 1]])
    assert (f2 - feat).norm(dim=1).mean() > 0.3 * torch.cdist(feat[:50], feat[:50]).mean()


# ------------------------------------------------------------------------------------------------
# the shipped generator against fresh teacher samples


@pytest.fixture(scope="module")
def sets():
    _need(classifier.WEIGHTS_FILE)
    _need(distill.GENERATOR_FILE)
    tb = trained.load()
    clf = classifier.load()
    za, cond = distill.class_batch(PER_CLASS, 101, tb.latent_shape)
    zb, _ = distill.class_batch(PER_CLASS, 202, tb.latent_shape)
    t0 = time.perf_counter()
    lat_a = distill.teacher_samples(tb, za, cond)
    wall_teacher = time.perf_counter() - t0
    fa, _ = clf.embed(tb.decode(lat_a))

    def ev(lat):
        f, p = clf.embed(tb.decode(lat))
        return dmd_eval.evaluate(f, p, cond, fa, cond)

    out = {"tb": tb, "zb": zb, "cond": cond, "ev": ev, "wall_teacher": wall_teacher}
    out["init"] = ev(distill.one_step_samples(distill.TestbedDenoiser(tb.net, tb.sigmas), zb, cond))
    gen, meta = distill.load_generator(distill.GENERATOR_FILE, tb)
    out["gen"], out["meta"] = gen, meta
    out["dmd"] = ev(distill.one_step_samples(gen, zb, cond, meta["conditioning_timestep"]))
    return out


def test_generator_file_metadata(sets):
    meta = sets["meta"]
    # the shipped file is in the earlier flat dmd.* layout, read by samplers.dmd.read_generator
    assert meta["model_type"] == "eps" and meta["conditioning_timestep"] == 999
    assert meta["timesteps"] == [999] and meta["format"] == "full" and meta["base"] == "testbed"
    assert meta["record"]["config"]["real_guidance_scale"] == 5.0 and meta["record"]["control"] == "none"


def test_shipped_generator_meets_criterion_2(sets):
    init, dmd = sets["init"], sets["dmd"]
    print("init", init, "\ndmd", dmd)
    assert dmd["fd_vs_teacher"] <= 0.15 * init["fd_vs_teacher"]
    assert dmd["class_acc"] >= 0.8
    assert dmd["diversity_ratio"] >= 0.8


def test_generator_wall_time_50x_below_teacher(sets):
    gen, zb, cond = sets["gen"], sets["zb"], sets["cond"]
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        distill.one_step_samples(gen, zb, cond)
        walls.append(time.perf_counter() - t0)
    assert sets["wall_teacher"] >= 50 * min(walls)


def test_real_score_only_control_fails_diversity(sets):
    _need(distill.CONTROL_FILE)
    gen, meta = distill.load_generator(distill.CONTROL_FILE, sets["tb"])
    assert meta["record"]["control"] == "real_only" and meta["record"]["config"]["use_fake_score"] is False
    r = sets["ev"](distill.one_step_samples(gen, sets["zb"], sets["cond"]))
    print("control", r)
    assert r["diversity_ratio"] < 0.8  # fails the diversity check ...
    assert r["diversity_ratio"] < sets["dmd"]["diversity_ratio"] - 0.1
    assert r["class_acc"] >= 0.8  # ... while it keeps the class


# ------------------------------------------------------------------------------------------------
# training smoke test and file round trip


def test_smoke_training_changes_generator_and_file_round_trip(tmp_path):
    tb = trained.load()
    settings = dict(distill.DEFAULTS, steps=3, batch=4, ratio=1, warmup=0)
    tr, record = distill.distill(settings, log=lambda s: None, tb=tb)
    assert tr.generator_steps == 3 and tr.fake_steps == 3
    before = dict(tb.net.named_parameters())
    changed = [k for k, p in tr.generator.net.net.named_parameters() if not torch.equal(p, before[k])]
    assert len(changed) > 0
    # the teacher is untouched (the trainer works on copies)
    assert all(not p.requires_grad for p in tb.net.parameters())
    path = tmp_path / "g.safetensors"
    distill.save_generator(path, tr.generator.net, 999, record)
    gen, meta = distill.load_generator(path, tb)
    z, cond = distill.class_batch(1, 0, tb.latent_shape)
    with torch.no_grad():
        a = distill.one_step_samples(tr.generator.net, z, cond)
        b = distill.one_step_samples(gen, z, cond)
    assert (a - b).abs().max() < 0.05 * a.abs().max()  # fp16 weights
    assert meta["record"]["settings"]["steps"] == 3
    with pytest.raises(FileNotFoundError, match="^path"):
        distill.load_generator(tmp_path / "missing.safetensors", tb)
    bad = tmp_path / "nometa.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="^path"):
        distill.load_generator(bad, tb)


# ------------------------------------------------------------------------------------------------
# the benchmark command


def test_bench_dmd_cli_writes_rows(tmp_path, capsys):
    _need(classifier.WEIGHTS_FILE)
    import json

    from comfyui_tempo.cli import main

    out = tmp_path / "dmd.json"
    assert main(["bench", "dmd", "--cases", "testbed", "--per-class", "3", "--quiet", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    keys = {
        "case",
        "method",
        "nfe",
        "modes_covered",
        "modes_total",
        "swd",
        "fd_vs_teacher",
        "class_acc",
        "diversity",
        "wall_s",
    }
    assert all(keys <= set(r) for r in rows)
    methods = [r["method"] for r in rows]
    assert any("noise floor" in m for m in methods) and any("generator at init" in m for m in methods)
    if distill.GENERATOR_FILE.is_file():
        dmd = next(r for r in rows if r["method"].startswith("DMD one-step"))
        assert dmd["nfe"] == 1 and dmd["class_acc"] > 0.5
    assert "fd_vs_teacher" in capsys.readouterr().out
