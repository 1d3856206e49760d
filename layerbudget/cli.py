"""The ``layerbudget`` command line: run experiments (more subcommands build on the same parser)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from layerbudget.errors import LayerbudgetError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(EXIT_USAGE, f"error: {message} (see `layerbudget --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="layerbudget",
        description="Search per-layer compression settings (bits, sparsity, dropped sub-blocks) under a global budget.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="run a budgeted search experiment (the embedded default without CONFIG)")
    run.add_argument("config", nargs="?", help="experiment TOML (default: the embedded MiniLM experiment)")
    run.add_argument("--out", help="run directory (default: output.dir of the config, else runs/<name>-<time>)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument("--seed", type=int, help="override the config's seed")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from layerbudget.config import load_config
    from layerbudget.experiments.outputs import SUMMARY_COLUMNS
    from layerbudget.experiments.runner import run_experiment

    cfg = load_config(args.config)
    if args.seed is not None:
        if args.seed < 0:
            raise LayerbudgetError(f"--seed must be a non-negative integer, but got {args.seed}")
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if args.threads is not None:
        if args.threads < 1:
            raise LayerbudgetError(f"--threads must be at least 1, but got {args.threads}")
        torch.set_num_threads(args.threads)
    result = run_experiment(
        cfg, out=args.out, overwrite=args.overwrite, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr)
    )
    widths = {c: max(len(c), 10) for c in SUMMARY_COLUMNS}
    widths["budget"] = max(len("budget"), *(len(r["budget"]) for r in result.rows))
    print("  ".join(c.ljust(widths[c]) for c in SUMMARY_COLUMNS))
    for r in result.rows:
        cells = []
        for c in SUMMARY_COLUMNS:
            v = r[c]
            cells.append((f"{v:.4g}" if isinstance(v, float) else str(v)).ljust(widths[c]))
        print("  ".join(cells))
    print(f"run directory: {result.run_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return {"run": _cmd_run}[args.command](args)
    except LayerbudgetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
