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
        (["demo"], demo, {"out": "out/demo", "sampler": "euler", "steps": 50, "seeds": 2, "target_speedup": 2.0,
                          "threshold": 0.01}),
        (["demo", "--out", "o", "--sampler", "heun", "--steps", "20", "--seeds", "1", "--threads", "2"], demo,
         {"out": "o", "sampler": "heun", "steps": 20, "seeds": 1, "threads": 2}),
        (["bench", "adaptive", "--json", "a.json", "--comfyui", "/c"], adaptive,
         {"json": "a.json", "comfyui": "/c", "quick": False, "samplers": "euler,dpmpp_2m"}),
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
