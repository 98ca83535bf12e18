"""Dispatch `python -m engine.bench MODE ...` to the module of that mode.

Each mode module defines `add_args(parser)` and `main(args)`. Only the chosen mode is imported, so a
mode's optional dependencies (triton, flash-attn, httpx) are needed only when it runs.
"""
import argparse
import importlib
import sys

MODES = {
    "attention": "engine.bench.attention",
    "throughput": "engine.bench.throughput",
    "latency": "engine.bench.latency",
    "serve": "engine.bench.serve",
    "skinny_gemm": "engine.bench.skinny_gemm",
    "tile_gemm": "engine.bench.tile_gemm",
    "decode_cost": "engine.bench.decode_cost",
    "sampling": "engine.bench.sampling",
    "tunableop": "engine.bench.tunableop",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in MODES:
        print(f"usage: python -m engine.bench {{{','.join(MODES)}}} [options]  (MODE --help for its options)",
              file=sys.stderr)
        sys.exit(2)
    mode = argv[0]
    module = importlib.import_module(MODES[mode])
    parser = argparse.ArgumentParser(prog=f"python -m engine.bench {mode}", description=module.__doc__)
    module.add_args(parser)
    module.main(parser.parse_args(argv[1:]))


if __name__ == "__main__":
    main()
