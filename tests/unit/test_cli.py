"""`comfyui-tempo`: cli.py only dispatches; each command's module registers its own parser and runs it.

The flags checked here are the ones the README's command lines use (`./dev demo`, `comfyui-tempo bench ...`)."""

from pathlib import Path

import pytest

from comfyui_tempo import cli
from comfyui_tempo.bench import adaptive, coop, demo, dmd

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", [adaptive, coop, demo, dmd], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_command_module_exposes_add_parser_and_main(module):
    assert callable(module.add_parser) and callable(module.main)


def test_cli_only_dispatches():
    text = (ROOT / "cli.py").read_text()
    assert len(text.splitlines()) < 80
    assert "add_argument" not in text  # flags belong to the command's module


@pytest.mark.parametrize(
    "argv, module, expected",
    [
        (
            ["demo"],
            demo,
            {"out": "out/demo", "sampler": "euler", "steps": 50, "seeds": 2, "target_speedup": 2.0, "threshold": 0.01},
        ),
        (
            ["demo", "--out", "o", "--sampler", "heun", "--steps", "20", "--seeds", "1", "--threads", "2"],
            demo,
            {"out": "o", "sampler": "heun", "steps": 20, "seeds": 1, "threads": 2},
        ),
        (
            ["bench", "adaptive", "--json", "a.json", "--comfyui", "/c"],
            adaptive,
            {"json": "a.json", "comfyui": "/c", "quick": False, "samplers": "euler,dpmpp_2m"},
        ),
        (["bench", "adaptive", "--quick"], adaptive, {"quick": True, "greedy": None}),
        (["bench", "coop", "--json", "c.json", "--quick"], coop, {"json": "c.json", "quick": True}),
        (["bench", "dmd", "--json", "d.json"], dmd, {"json": "d.json", "quick": False, "cases": "", "threads": 1}),
        (["bench", "dmd", "--quick", "--per-class", "3"], dmd, {"quick": True, "per_class": 3}),
    ],
)
def test_commands_keep_their_flags_and_reach_their_module(monkeypatch, argv, module, expected):
    seen = []
    monkeypatch.setattr(module, "main", lambda args: seen.append(args) or 7)
    assert cli.main(argv) == 7
    (args,) = seen
    for key, value in expected.items():
        assert getattr(args, key) == value, key
    assert args.argv == (argv[2:] if argv[0] == "bench" else argv[1:])  # the JSON's "command" line


def test_unknown_commands_are_refused(capsys):
    for argv in (["bench", "nope"], ["nope"], []):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2


# ------------------------------------------------------------------------------------------------
# the demo's images: labelled, with difference maps; the skip plot with a legend and a cut title


def test_demo_writes_labelled_images_and_its_metrics(tmp_path, capsys):
    import json

    from PIL import Image

    from comfyui_tempo.testbed import classifier, distill, trained

    for path in (trained.WEIGHTS_FILE, classifier.WEIGHTS_FILE, distill.GENERATOR_FILE):
        if not path.is_file():
            pytest.skip(f"{path.name} not built")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--steps", "10", "--seeds", "1", "--threads", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["method"] for r in metrics["rows"]] == ["full", "adaptive", "adaptive_paper"]
    assert metrics["grid_columns"] == [
        "full",
        "adaptive",
        "|adaptive - full|",
        "adaptive_paper",
        "|adaptive_paper - full|",
    ]
    assert json.loads((out / "dmd.json").read_text())["rows"][1]["nfe"] == 1
    # one seed: 5 columns (grid) and 3 (dmd) of 128 px tiles, 10 rows, plus headers, labels and metrics
    grid, dmd = Image.open(out / "grid.png"), Image.open(out / "dmd_grid.png")
    assert grid.width > 5 * 128 and grid.height > 10 * 128 + 100
    assert dmd.width > 3 * 128 and dmd.height == grid.height
    assert Image.open(out / "skip_path.png").size == (640, 240)
    printed = capsys.readouterr().out
    assert "adaptive_paper" in printed and "dmd_onestep" in printed


def _report(n: int, notes=()):
    from comfyui_tempo.samplers.adaptive import SkipReport, StepRecord

    rep = SkipReport(
        steps=n, batch=2, nfe_per_sample=[n // 2, n // 2], evals_requested=n, notes=list(notes), mode="target"
    )
    rep.records = [
        StepRecord(i, 10.0 / (i + 1), None if i < 3 else 10 ** (-3 + (i % 7) / 3), float(i % 2 == 0)) for i in range(n)
    ]
    return rep


@pytest.mark.parametrize(
    "n, threshold, size",
    [(50, None, (640, 240)), (30, 0.01, (640, 240)), (0, 0.01, (640, 240)), (200, 0.05, (320, 160))],
)
def test_skip_plot_draws_any_report(n, threshold, size):
    import numpy as np

    from comfyui_tempo.samplers.plot import plot_report

    img = plot_report(_report(n), width=size[0], height=size[1], threshold=threshold)
    assert img.shape == (size[1], size[0], 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0


def test_long_titles_end_with_an_ellipsis():
    from PIL import Image, ImageDraw

    from comfyui_tempo.samplers.plot import ELLIPSIS, default_font, fit_text

    draw, font = ImageDraw.Draw(Image.new("RGB", (10, 10))), default_font(13)
    assert fit_text(draw, "short", font, 200) == "short"
    long = _report(50, notes=["needs 5 skips but only 4 fit " * 4]).summary()
    cut = fit_text(draw, long, font, 600)
    assert cut.endswith(ELLIPSIS) and draw.textlength(cut, font=font) <= 600
    assert long.startswith(cut[: -len(ELLIPSIS)])


def test_difference_maps_share_one_gain_and_show_the_gap():
    import numpy as np

    from comfyui_tempo.bench import figures

    ref = np.full((2, 3, 8, 8), 0.5, dtype=np.float32)
    near, far = ref + 0.002, ref.copy()
    far[:, 1, :4] += 0.08
    diffs = [figures.abs_difference(near, ref), figures.abs_difference(far, ref)]
    assert diffs[0].shape == (2, 8, 8) and np.allclose(diffs[1].max(), 0.08)
    gain = figures.nice_gain(diffs)
    assert gain == 10  # 0.08 x 10 stays below 1; x 20 would not
    dim, bright = (figures.difference_tiles(d, gain)[0] for d in diffs)
    assert dim.max() < 0.1 and bright.max() > 0.7  # black is "identical", the 18 dB-like gap shows
    assert figures.nice_gain([np.zeros((1, 2, 2))]) == 10000  # identical images: the largest gain, not a crash
