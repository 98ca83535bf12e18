"""Dispatch `python -m engine.bench MODE ...` to the module of that mode.

Each mode module defines `add_args(parser)` and `main(args)`; they are imported lazily so a mode's
optional dependencies (triton, flash-attn, openai) are needed only when it runs.
"""
import argparse
import importlib

MODES = {
    "attention": "engine.bench.attention",
    "throughput": "engine.bench.throughput",
    "latency": "engine.bench.latency",
    "serve": "engine.bench.serve",
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m engine.bench")
    sub = parser.add_subparsers(dest="mode", required=True)
    modules = {}
    for mode, module_name in MODES.items():
        module = importlib.import_module(module_name)
        modules[mode] = module
        module.add_args(sub.add_parser(mode, help=(module.__doc__ or "").strip().splitlines()[0]))
    args = parser.parse_args()
    modules[args.mode].main(args)


if __name__ == "__main__":
    main()
