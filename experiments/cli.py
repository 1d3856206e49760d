"""The ``layerbudget`` command line: run experiments, build profiles, show and plot runs, export and apply plans.

Each command imports what it needs when it runs, so ``--help`` and usage errors answer at once.
Bad input is one line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from layerbudget.errors import LayerbudgetError
from layerbudget.notices import show_notices

if TYPE_CHECKING:
    from layerbudget.experiments.config import ExperimentConfig
    from layerbudget.plan import Plan

EXIT_USAGE = 2
EXIT_MISMATCH = 1
EXPORT_FORMATS = ("llmcompressor", "gptqmodel", "checkpoint", "compressed-tensors")  # experiments.export.FORMATS
CT_LAYOUTS = ("pack-quantized", "naive-quantized")  # experiments.export_ct.CT_FORMATS


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
    run.add_argument("--executor", choices=("inline", "ray"), help="override executor.kind of the config")
    run.add_argument("--workers", type=int, help="Ray evaluation actors (implies --executor ray)")
    run.add_argument("--ray-address", help="connect to this Ray cluster (implies --executor ray)")
    run.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run (its config is read from RUN_DIR.partial/)"
    )

    prof = sub.add_parser(
        "profile", help="build and cache the database, sensitivity profile and latency tables of an experiment"
    )
    prof.add_argument("config", nargs="?", help="experiment TOML (default: the embedded MiniLM experiment)")
    prof.add_argument(
        "--target", action="append", metavar="TARGET",
        help="latency target (repeatable; 'all' = every known one; default: [latency] target of the config)",
    )
    prof.add_argument("--tokens", type=int, help="rows per matmul for latency (default: [latency] tokens)")
    prof.add_argument("--out", help="also write profile.parquet, latency-<target>.parquet, database.json here")
    prof.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    prof.add_argument("--quiet", action="store_true", help="no progress bars")

    plot = sub.add_parser("plot", help="Pareto frontiers of one or more run directories (and a plan heatmap of one)")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to overlay")
    plot.add_argument("--out", help="figure file (default: RUN_DIR/pareto.png for one run, ./pareto.png for several)")

    show = sub.add_parser("show", help="print a run's summary table and the option counts of its plan")
    show.add_argument("run_dir", metavar="RUN_DIR")

    export = sub.add_parser("export", help="export a run's plan to a deployment format")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="what to write")
    export.add_argument("--out", help="output path (default: RUN_DIR/export/<recipe.yaml|quantize_config.json|checkpoint"
                                      "|compressed-tensors>)")
    export.add_argument("--plan", help="plan file to export instead of RUN_DIR/plan.json (e.g. plans/ilp-b1.json)")
    export.add_argument("--allow-drop", action="store_true",
                        help="export plans with dropped sub-blocks to formats that cannot drop (llmcompressor, gptqmodel: "
                             "left out; compressed-tensors: zero output projections)")
    export.add_argument("--ct-format", choices=CT_LAYOUTS,
                        help="compressed-tensors layout: pack-quantized (default; vLLM) or naive-quantized (one int8 "
                             "per code; transformers runs it)")
    export.add_argument("--quiet", action="store_true", help="no progress bars")

    apply = sub.add_parser("apply", help="rebuild a plan's compressed model and re-measure its fitness")
    apply.add_argument("plan", metavar="PLAN",
                       help="plan.json, a run directory, or a checkpoint / compressed-tensors export directory")
    apply.add_argument("model", nargs="?", metavar="MODEL", help="model directory or hub id (default: the plan's)")
    apply.add_argument("--config", help="experiment TOML to use instead of the config stored in the plan")
    apply.add_argument("--tolerance", type=float, default=1e-4, help="relative tolerance on fitness (default 1e-4)")
    apply.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from layerbudget.experiments.config import config_from_dict, load_config
    from layerbudget.experiments.outputs import summary_columns
    from layerbudget.experiments.runner import partial_dir, run_experiment
    from layerbudget.experiments.significance import aligned_table, noise_line

    out = args.out
    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise LayerbudgetError("--resume RUN_DIR already names the run directory; drop --out")
        out = args.resume
        saved = partial_dir(Path(args.resume)) / "config.json"
        if args.config is None and saved.is_file():
            try:
                cfg = config_from_dict(json.loads(saved.read_text()))
            except ValueError as exc:
                raise LayerbudgetError(f"cannot resume: {saved} is unreadable ({exc})") from None
        else:
            cfg = load_config(args.config)
    else:
        cfg = load_config(args.config)
    ray_wanted = args.executor == "ray" or args.workers is not None or args.ray_address is not None
    if args.executor == "inline" and ray_wanted:
        raise LayerbudgetError("--workers and --ray-address need the Ray executor, not --executor inline")
    if args.workers is not None and args.workers < 1:
        raise LayerbudgetError(f"--workers must be at least 1, but got {args.workers}")
    if args.executor or ray_wanted:
        ex = cfg.executor
        cfg = dataclasses.replace(
            cfg,
            executor=dataclasses.replace(
                ex,
                kind="ray" if ray_wanted else args.executor,
                workers=args.workers if args.workers is not None else ex.workers,
                address=args.ray_address if args.ray_address is not None else ex.address,
            ),
        )
    if args.seed is not None:
        if args.seed < 0:
            raise LayerbudgetError(f"--seed must be a non-negative integer, but got {args.seed}")
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if args.threads is not None:
        if args.threads < 1:
            raise LayerbudgetError(f"--threads must be at least 1, but got {args.threads}")
        torch.set_num_threads(args.threads)
    result = run_experiment(
        cfg,
        out=out,
        overwrite=args.overwrite,
        progress=not args.quiet,
        log=lambda m: print(m, file=sys.stderr),
        resume=bool(args.resume),
    )
    print(aligned_table(result.rows, summary_columns(result.rows)))
    if result.comparisons:
        print(noise_line(result.comparisons))
    print(f"run directory: {result.run_dir}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    import time

    import torch

    from layerbudget.experiments.config import load_config
    from layerbudget.experiments.prepare import prepare
    from layerbudget.profiles.hardware import known_targets
    from layerbudget.profiles.latency import load_or_build_latency, slot_latency_ns
    from layerbudget.profiles.profile import write_profile
    from layerbudget.storage import atomic_dir

    cfg = load_config(args.config)
    targets = list(args.target or ([cfg.latency.target] if cfg.latency.target else []))
    if "all" in targets:
        targets = known_targets()
    for t in targets:
        if t not in known_targets():
            raise LayerbudgetError(f"unknown latency target {t!r}; known: {', '.join(known_targets())}, all")
    tokens = cfg.latency.tokens if args.tokens is None else args.tokens
    if tokens < 1:
        raise LayerbudgetError(f"--tokens must be a positive integer, but got {tokens}")
    if args.threads is not None:
        if args.threads < 1:
            raise LayerbudgetError(f"--threads must be at least 1, but got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.out and Path(args.out).exists():
        raise LayerbudgetError(f"output directory {args.out!r} exists; choose another --out")
    t0 = time.perf_counter()
    prep = prepare(cfg, progress=not args.quiet)
    db = prep.database
    t_db = time.perf_counter() - t0
    _note(f"database {db.root}: {len(prep.adapter.units)} units x {len(prep.option_names)} options, "
          f"{db.size_bytes() / 2**20:.1f} MiB, {'reused' if prep.database_reused else f'built in {t_db:.1f} s'}")
    for skip in db.skipped:
        _note(f"skipped: {skip['option']} on {skip['unit']}: {skip['reason']}")
    t1 = time.perf_counter()
    profile, reused = prep.profile(progress=not args.quiet)
    _note(f"profile {profile.key[:16]}: {len(profile.table)} (slot, option) rows, "
          f"{'reused' if reused else f'measured in {time.perf_counter() - t1:.1f} s'}")
    table = profile.table
    units = table[(table["kind"] == "units") & (table["option"] != "dense")]
    if len(units):
        worst = units.loc[units.groupby("slot")["avg_bits"].idxmin()].nlargest(5, "fitness")
        print("most sensitive unit slots at their cheapest option:")
        print(worst[["slot", "option", "avg_bits", "fitness", "output_error"]].to_string(
            index=False, float_format=lambda v: f"{v:.4g}"))
    subs = table[(table["kind"] == "subblock") & (table["option"] == "drop")]
    if len(subs):
        print("sub-blocks (drop one at a time):")
        print(subs[["slot", "fitness", "block_influence"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    latencies = {}
    for t in targets:
        lat, lat_reused = load_or_build_latency(prep.problem, t, tokens, prep.cache_dir)
        latencies[t] = lat
        prep.problem.set_latency(slot_latency_ns(prep.problem, lat))
        dense = prep.problem.uniform("dense")
        lo, _ = prep.problem.metric_range("latency_us")
        print(f"latency {t} at {tokens} row(s): dense units {prep.problem.metric(dense, 'latency_us'):.1f} us, "
              f"fastest plan {lo:.1f} us ({lat['source'].iloc[0]}{', cached' if lat_reused else ''})")
    if args.out:
        with atomic_dir(Path(args.out)) as tmp:
            write_profile(profile, tmp / "profile.parquet", {"config": cfg.name})
            for t, lat in latencies.items():
                lat.to_parquet(tmp / f"latency-{t}.parquet", index=False)
            summary = {"database": str(db.root), "key": db.key, "size_bytes": db.size_bytes(),
                       "options": db.options, "skipped": db.skipped, "calibration": db.index.get("calibration")}
            (tmp / "database.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _cmd_plot(args: argparse.Namespace) -> int:
    from layerbudget.experiments.plots import plot_pareto, plot_plan_heatmap

    runs = [Path(d) for d in args.run_dirs]
    out = Path(args.out) if args.out else (runs[0] / "pareto.png" if len(runs) == 1 else Path("pareto.png"))
    written = plot_pareto(runs, out)
    if len(runs) == 1:
        written += plot_plan_heatmap(runs[0], runs[0] / "plan_heatmap.png")
    for path in written:
        print(f"wrote {path}")
    return 0


def _load_run_plan(run_dir: str, plan_file: str | None = None) -> Plan:
    """The plan of a run directory (``plan.json``, or ``plan_file`` resolved against the run directory)."""
    from layerbudget.plan import Plan

    root = Path(run_dir)
    if not root.is_dir():
        raise LayerbudgetError(f"run directory {run_dir!r} does not exist")
    if plan_file is None:
        if not (root / "plan.json").is_file():
            raise LayerbudgetError(f"{run_dir!r} has no finished plan.json (is the run complete?)")
        return Plan.load(root / "plan.json")
    for path in (Path(plan_file), root / plan_file, root / "plans" / plan_file, root / "plans" / f"{plan_file}.json"):
        if path.is_file():
            return Plan.load(path)
    raise LayerbudgetError(f"plan {plan_file!r} not found (looked in {run_dir!r} and its plans/)")


def _cmd_show(args: argparse.Namespace) -> int:
    import pandas as pd

    plan = _load_run_plan(args.run_dir)
    root = Path(args.run_dir)
    print(f"run {root.resolve().name}: model {plan.model['id']} ({plan.model.get('family', '?')}), "
          f"fitness {plan.provenance.get('fitness', '?')}")
    if (root / "summary.csv").is_file():
        from layerbudget.experiments.outputs import summary_columns
        from layerbudget.experiments.significance import aligned_table

        summary = pd.read_csv(root / "summary.csv")
        if "bytes" in summary.columns:
            summary["MB"] = summary["bytes"] / 1e6
        rows = summary.to_dict("records")
        columns = summary_columns(rows)
        if "MB" in summary.columns:
            columns.insert(columns.index("avg_bits") + 1 if "avg_bits" in columns else 2, "MB")
        print(aligned_table(rows, columns))
    if (root / "comparisons.csv").is_file():
        from layerbudget.experiments.significance import noise_line

        comparisons = pd.read_csv(root / "comparisons.csv").to_dict("records")
        if comparisons:
            print(noise_line(comparisons))
    measured = ", ".join(f"{k} {v:.4g}" for k, v in plan.measured.items())
    budget = ", ".join(f"{k} {v:g}" for k, v in plan.budget.items())
    print(f"\nplan.json: {plan.searcher} at budget {budget}; {measured}")
    counts = pd.Series(list(plan.units.values())).value_counts()
    print(counts.rename_axis("option").reset_index(name="units").to_string(index=False))
    if plan.dropped:
        print(f"dropped sub-blocks: {', '.join(plan.dropped)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from layerbudget.experiments.apply import check_ties
    from layerbudget.experiments.export import PLAN_EXPORTERS, export_checkpoint, export_compressed_tensors
    from layerbudget.experiments.export_check import check_export
    from layerbudget.experiments.export_ct import check_ct_dir
    from layerbudget.experiments.packed_checkpoint import check_checkpoint_dir
    from layerbudget.model import load_model

    plan = _load_run_plan(args.run_dir, args.plan)
    default = {"llmcompressor": "recipe.yaml", "gptqmodel": "quantize_config.json", "checkpoint": "checkpoint",
               "compressed-tensors": "compressed-tensors"}
    out = Path(args.out) if args.out else Path(args.run_dir) / "export" / default[args.format]
    if args.ct_format is not None and args.format != "compressed-tensors":
        raise LayerbudgetError("--ct-format applies to --format compressed-tensors only")
    check_ties(plan)  # fail fast, before any model is loaded
    cfg = _export_config(plan, Path(args.run_dir))
    if args.format in ("checkpoint", "compressed-tensors"):  # the searched weights: model and database
        from layerbudget.experiments.prepare import prepare

        (check_checkpoint_dir if args.format == "checkpoint" else check_ct_dir)(out)
        try:  # reuse the cached database without building anything
            prep = prepare(cfg, progress=not args.quiet, build=False)
        except LayerbudgetError:  # no database yet: check the model before paying for one
            check_export(plan, load_model(cfg.model.id, family=cfg.model.family, dtype=cfg.model.dtype))
            prep = prepare(cfg, progress=not args.quiet)
        if args.format == "checkpoint":
            exported = export_checkpoint(plan, prep.adapter, prep.database, out)
        else:
            exported = export_compressed_tensors(plan, prep.adapter, prep.database, out, allow_drop=args.allow_drop,
                                                 layout=args.ct_format or CT_LAYOUTS[0])
    else:
        adapter = load_model(cfg.model.id, family=cfg.model.family, dtype=cfg.model.dtype)
        exported = PLAN_EXPORTERS[args.format](plan, out, model=adapter, allow_drop=args.allow_drop)
    for note in exported.notes:
        _note(f"note: {note}")
    print(f"wrote {exported.path}")
    return 0


def _export_config(plan: Plan, run_dir: Path) -> ExperimentConfig:
    """The experiment config of an exported plan: its own, else the run directory's ``config.json``."""
    from layerbudget.experiments.config import config_from_dict

    if isinstance(plan.provenance.get("config"), dict) or not (run_dir / "config.json").is_file():
        return _plan_config(plan, None)
    try:
        return config_from_dict(json.loads((run_dir / "config.json").read_text()))
    except ValueError as exc:
        raise LayerbudgetError(f"{run_dir / 'config.json'} is unreadable: {exc}") from None


def _plan_config(plan: Plan, config_file: str | None, model: str | None = None) -> ExperimentConfig:
    """The experiment config of a plan: ``config_file``, else the one stored in its provenance."""
    import dataclasses

    from layerbudget.experiments.config import config_from_dict, load_config

    if config_file is not None:
        cfg = load_config(config_file)
    elif isinstance(plan.provenance.get("config"), dict):
        cfg = config_from_dict(plan.provenance["config"])
    else:
        raise LayerbudgetError("the plan stores no experiment config; pass --config EXPERIMENT.toml")
    if model is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, id=model))
    return cfg


def _cmd_apply(args: argparse.Namespace) -> int:
    from layerbudget.experiments.apply import reproduce
    from layerbudget.plan import Plan

    if not args.tolerance >= 0:
        raise LayerbudgetError(f"--tolerance must be a non-negative number, but got {args.tolerance}")
    from layerbudget.experiments.packed_checkpoint import PLAN_FILE

    path = Path(args.plan)
    if path.is_dir():  # a run directory (plan.json) or a checkpoint / compressed-tensors export (its plan file)
        path = path / PLAN_FILE if not (path / "plan.json").is_file() and (path / PLAN_FILE).is_file() else path / "plan.json"
    plan = Plan.load(path)
    result = reproduce(plan, _plan_config(plan, args.config, args.model), progress=not args.quiet)
    if not result.same_calibration:
        _note("note: the calibration tokens differ from those the plan was measured on")
    recorded, held = plan.measured.get("fitness"), plan.measured.get("heldout")
    print(f"{result.fitness_name} (calibration): reproduced {result.fitness:.6g}, plan {recorded if recorded is None else f'{recorded:.6g}'}")
    print(f"{result.fitness_name} (held-out):    reproduced {result.heldout:.6g}, plan {held if held is None else f'{held:.6g}'}")
    if recorded is None:
        _note("note: the plan records no fitness; nothing to compare")
        return 0
    diff = result.rel_diff(recorded)
    if diff <= args.tolerance:
        print(f"reproduced: relative difference {diff:.2g} <= {args.tolerance:g}")
        return 0
    print(f"error: reproduced fitness differs from the plan's by {diff:.3g} (relative), more than {args.tolerance:g}",
          file=sys.stderr)
    return EXIT_MISMATCH


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
    show_notices()  # cache rebuilds and the like as plain `note:` lines
    try:
        commands = {"run": _cmd_run, "profile": _cmd_profile, "plot": _cmd_plot, "show": _cmd_show, "export": _cmd_export, "apply": _cmd_apply}
        return commands[args.command](args)
    except LayerbudgetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
