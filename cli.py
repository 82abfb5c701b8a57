"""`comfyui-tempo`: the pack's algorithms without ComfyUI.

  comfyui-tempo demo [--out DIR]            AdaptiveDiffusion and the DMD one-step generator on the bundled testbed: grids + metrics
  comfyui-tempo bench adaptive [--json F]   the AdaptiveDiffusion benchmark table
  comfyui-tempo bench coop [--json F]       Coop-Diffusion bridges, resolution hand-off, fusion, time-decoupled
  comfyui-tempo bench dmd [--json F]        DMD one-step generators against their teachers

Each command lives in one module of bench/ that exposes add_parser(subparsers) and main(args);
this file only builds the parser from them and dispatches.
"""

from __future__ import annotations

import argparse
import sys


def _modules():
    """(demo, {bench name: module}), imported on use (they import torch)."""
    from .bench import adaptive, coop, demo, dmd

    return demo, {"adaptive": adaptive, "coop": coop, "dmd": dmd}


def build_parser() -> argparse.ArgumentParser:
    demo, benches = _modules()
    parser = argparse.ArgumentParser(
        prog="comfyui-tempo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    bench = sub.add_parser("bench", help="benchmarks that print a table and write JSON")
    bench_sub = bench.add_subparsers(dest="which", required=True)
    for module in benches.values():
        module.add_parser(bench_sub)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[2:] if args.command == "bench" else argv[1:]  # recorded in the JSON's "command"
    demo, benches = _modules()
    module = demo if args.command == "demo" else benches[args.which]
    return module.main(args)


if __name__ == "__main__":
    sys.exit(main())
