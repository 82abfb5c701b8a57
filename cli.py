"""`comfyui-tempo`: the pack's algorithms without ComfyUI.

  comfyui-tempo demo [--out DIR]            AdaptiveDiffusion and the DMD one-step generator on the bundled testbed: grids + metrics
  comfyui-tempo bench adaptive [--json F]   the AdaptiveDiffusion benchmark table
  comfyui-tempo bench coop [--json F]       Coop-Diffusion bridges, resolution hand-off, fusion, time-decoupled
  comfyui-tempo bench dmd [--json F]        DMD one-step generators against their teachers
  comfyui-tempo bench decoupled-training    time-decoupled structure / texture experts against one model
  comfyui-tempo adaptive calibrate [--out F] a calibrated AdaptiveDiffusion skip profile on the bundled testbed
  comfyui-tempo train dmd --testbed|--job J  DMD distillation, also under torchrun (DDP / FSDP; harness/train_dmd.py)
  comfyui-tempo train dmd-export --out J ... a DMD job folder from a checkpoint and prompts (ComfyUI's Python)

Each command lives in one module of bench/ that exposes add_parser(subparsers) and main(args);
this file only builds the parser from them and dispatches.
"""

from __future__ import annotations

import argparse
import sys


def _modules():
    """(demo, {group: {command: module}}), imported on use (they import torch)."""
    from .bench import adaptive, adaptive_calibration, coop, decoupled_training, demo, dmd
    from .harness import dmd_export, train_dmd

    return demo, {
        "train": {"dmd": train_dmd, "dmd-export": dmd_export},
        "bench": {"adaptive": adaptive, "coop": coop, "dmd": dmd, "decoupled-training": decoupled_training},
        "adaptive": {"calibrate": adaptive_calibration},
    }


def build_parser() -> argparse.ArgumentParser:
    demo, groups = _modules()
    parser = argparse.ArgumentParser(
        prog="comfyui-tempo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    helps = {
        "bench": "benchmarks that print a table and write JSON",
        "adaptive": "AdaptiveDiffusion tools",
        "train": "training",
    }
    for group, modules in groups.items():
        group_sub = sub.add_parser(group, help=helps.get(group)).add_subparsers(dest="which", required=True)
        for module in modules.values():
            module.add_parser(group_sub)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[1:] if args.command == "demo" else argv[2:]  # recorded in the JSON's "command"
    demo, groups = _modules()
    module = demo if args.command == "demo" else groups[args.command][args.which]
    return module.main(args)


if __name__ == "__main__":
    sys.exit(main())
