"""Exports of a finished run as their loaders see them: fitness through transformers, bytes on disk.

For each plan of a run directory (``plan.json``, or ``--plan`` files) without dropped sub-blocks:

- the compressed-tensors export (``naive-quantized``, the layout transformers runs) is loaded with
  plain ``transformers`` and its fitness is measured on the run's own calibration windows, against
  the fitness the plan records;
- the ``pack-quantized`` export and the project checkpoint are written, and the bytes of their
  weights files are set against the plan's predicted bytes;
- the first config group of the written ``quantization_config`` is printed as a sample.

The run's database must be in the cache (``LAYERBUDGET_CACHE``): nothing is re-calibrated.

Usage::

    python benchmarks/export_roundtrip.py RUN_DIR [--plan RUN_DIR/plans/ilp-b0.json ...] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from layerbudget.experiments.config import config_from_dict
from layerbudget.experiments.export import export_checkpoint, export_compressed_tensors
from layerbudget.experiments.export_ct import NAIVE_FORMAT, PACK_FORMAT
from layerbudget.experiments.prepare import prepare
from layerbudget.plan import Plan
from layerbudget.storage import atomic_write_text


def _measure(forward, dense_forward, ids: torch.Tensor, fitness, batch: int) -> float:
    """The fitness of ``forward`` against ``dense_forward`` over ``ids``, summed over batches as the engine does."""
    num = den = 0.0
    with torch.inference_mode():
        for chunk in torch.split(ids, batch):
            n, d = fitness.partial(forward(chunk), fitness.reference(dense_forward(chunk)))
            num, den = num + n, den + d
    return num / den


def _loaded_forward(path: Path, task: str):
    """``input_ids -> output`` of the export loaded by plain transformers (what the fitness compares)."""
    from transformers import AutoModel, AutoModelForCausalLM

    if task == "causal":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return lambda x: model(input_ids=x, use_cache=False).logits
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    return lambda x: model(input_ids=x).last_hidden_state


def roundtrip(plan_path: Path, prep, work: Path) -> dict:
    plan = Plan.load(plan_path)
    if plan.dropped:
        return {"plan": str(plan_path), "skipped": "dropped sub-blocks (exported only with --allow-drop)"}
    adapter, ids, fitness = prep.adapter, prep.tokens.calib, prep.fitness
    naive, packed, ckpt = work / f"{plan_path.stem}-naive", work / f"{plan_path.stem}-packed", work / f"{plan_path.stem}-ckpt"
    export_compressed_tensors(plan, adapter, prep.database, naive, layout=NAIVE_FORMAT)
    export_compressed_tensors(plan, adapter, prep.database, packed, layout=PACK_FORMAT)
    export_checkpoint(plan, adapter, prep.database, ckpt)
    adapter.restore()
    got = _measure(_loaded_forward(naive, adapter.task), adapter.forward, ids, fitness, prep.cfg.data.batch_size)
    recorded = plan.measured["fitness"]
    predicted = plan.predicted["bytes"]
    qconfig = json.loads((packed / "config.json").read_text())["quantization_config"]
    first_group = next(iter(qconfig.get("config_groups", {}).items()), None)
    return {
        "plan": str(plan_path),
        "searcher": plan.searcher,
        "fitness_plan": recorded,
        "fitness_transformers": got,
        "fitness_rel_diff": abs(got - recorded) / abs(recorded),
        "bytes_predicted": predicted,
        "bytes_checkpoint": (ckpt / "layerbudget.safetensors").stat().st_size,
        "bytes_ct_pack_quantized": (packed / "model.safetensors").stat().st_size,
        "bytes_ct_naive_quantized": (naive / "model.safetensors").stat().st_size,
        "quantization_config_sample": {
            "quant_method": qconfig.get("quant_method"),
            "format": qconfig.get("format"),
            "config_groups": len(qconfig.get("config_groups", {})),
            "first_group": dict([first_group]) if first_group else None,
            "ignore": qconfig.get("ignore", [])[:4],
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--plan", type=Path, nargs="+", help="plan files (default: the run's plans/*.json)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    cfg = config_from_dict(json.loads((args.run_dir / "config.json").read_text()))
    prep = prepare(cfg, progress=False, build=False)
    plans = args.plan or sorted((args.run_dir / "plans").glob("*.json"))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [roundtrip(p, prep, Path(tmp)) for p in plans]
    for r in rows:
        if "skipped" in r:
            print(f"{r['plan']}: skipped, {r['skipped']}")
            continue
        print(f"{r['searcher']:<10} fitness plan {r['fitness_plan']:.6f}, through transformers {r['fitness_transformers']:.6f} "
              f"(relative difference {r['fitness_rel_diff']:.1e}); bytes predicted {r['bytes_predicted']:,.0f}, "
              f"checkpoint {r['bytes_checkpoint']:,} ({r['bytes_checkpoint'] / r['bytes_predicted'] - 1:+.2%}), "
              f"compressed-tensors pack-quantized {r['bytes_ct_pack_quantized']:,}")
    sample = next((r["quantization_config_sample"] for r in rows if "skipped" not in r), None)
    if sample:
        print("quantization_config sample:", json.dumps(sample, indent=1))
    if args.out:
        atomic_write_text(args.out, json.dumps({"run_dir": str(args.run_dir), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
