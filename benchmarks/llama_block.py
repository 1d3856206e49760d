"""One Llama-3-8B-shaped block's seven matmuls at decode (M = 1): fp16 nn.Linear against the packed modules.

Usage (on a CUDA GPU): ``python benchmarks/llama_block.py --out block.csv``. Plans: ``fp16`` (the
baseline), ``uniform-w4g128`` (every matmul 4-bit, groups of 128) and ``mixed`` (k/v 8-bit, q/o
4-bit, gate/up 3-bit, down 4-bit: a plan a search could return). Each plan's seven calls (q, k, v,
o, gate, up, down in order; attention and activations left out so the matmuls are what is timed)
are captured in one CUDA graph, and the graph replay is timed with ``triton.testing.do_bench``
(median, L2 flushed between replays), so Python overhead does not hide the kernels. Prints one
line per plan and writes gpu, plan, ms, speedup over fp16, weight bytes and the max relative error
of the block's outputs against the same plan run through the torch reference (``path="reference"``).
Each packed plan runs as the dispatch rule sends it, and again as ``PLAN/tc`` with every matmul on
the tensor-core kernel (the one-dot-per-field kernel for 2/4/8-bit codes), so one run shows which wins.
"""

from __future__ import annotations

import argparse
import csv
import sys

import torch
from torch import nn

HIDDEN, INTER, KV = 4096, 14336, 1024
SHAPES = {"q": (HIDDEN, HIDDEN), "k": (KV, HIDDEN), "v": (KV, HIDDEN), "o": (HIDDEN, HIDDEN),
          "gate": (INTER, HIDDEN), "up": (INTER, HIDDEN), "down": (HIDDEN, INTER)}
PLANS = {
    "uniform-w4g128": {name: (4, 128) for name in SHAPES},
    "mixed": {"q": (4, 128), "k": (8, 128), "v": (8, 128), "o": (4, 128), "gate": (3, 128), "up": (3, 128),
              "down": (4, 128)},
}


def build(plan: dict[str, tuple[int, int]] | None, dense: dict[str, nn.Linear]) -> dict[str, nn.Module]:
    from layerbudget.kernels.modules import QuantLinear

    if plan is None:
        return dense
    return {name: QuantLinear.from_linear(lin, bits, group) for name, (bits, group) in plan.items()
            for lin in [dense[name]]}


def run_block(mods: dict[str, nn.Module], x: torch.Tensor, x_inter: torch.Tensor) -> list[torch.Tensor]:
    """The seven matmuls; gate/up/down read the activations their real inputs would have the shape of."""
    return [mods[name](x_inter if name == "down" else x) for name in SHAPES]


def graph_of(mods, x, x_inter) -> tuple[torch.cuda.CUDAGraph, list[torch.Tensor]]:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up: compile kernels, allocate the split-K workspace
            run_block(mods, x, x_inter)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = run_block(mods, x, x_inter)
    return graph, outs


def time_plan(mods: dict[str, nn.Module], packed: bool, x: torch.Tensor, x_inter: torch.Tensor
              ) -> tuple[float, float, int]:
    """(ms of one graph replay, max relative error against the torch reference, weight bytes) of one plan."""
    from triton.testing import do_bench

    graph, outs = graph_of(mods, x, x_inter)
    graph.replay()
    torch.cuda.synchronize()
    err = 0.0
    if packed:
        for name, out in zip(SHAPES, outs):
            mods[name].path = "reference"  # torch only
            ref = mods[name](x_inter if name == "down" else x)
            mods[name].path = "auto"
            err = max(err, ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item())
    ms = float(do_bench(graph.replay, warmup=25, rep=200, return_mode="median"))
    nbytes = sum(sum(t.numel() * t.element_size() for t in m.buffers()) + sum(
        p.numel() * p.element_size() for p in m.parameters()) for m in mods.values())
    return ms, err, nbytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("llama_block: needs a CUDA GPU; none here, so no numbers are reported.", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    dense = {name: nn.Linear(k, n, bias=False, device="cuda", dtype=torch.float16) for name, (n, k) in SHAPES.items()}
    x = torch.randn(1, HIDDEN, device="cuda", dtype=torch.float16)
    x_inter = torch.randn(1, INTER, device="cuda", dtype=torch.float16)
    base_ms, written = None, 0
    runs = [("fp16", None, None)] + [(name + tag, plan, kernel) for name, plan in PLANS.items()
                                     for tag, kernel in (("", None), ("/tc", "tc"))]
    fields = ["gpu", "plan", "ms", "speedup_vs_fp16", "weight_bytes", "max_rel_err"]
    with open(args.out, "w", newline="") as fh:  # rows written as measured, so a time limit keeps them
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for plan_name, plan, kernel in runs:
            try:
                mods = build(plan, dense)
                for mod in mods.values() if kernel else ():
                    mod.kernel = kernel
                ms, err, nbytes = time_plan(mods, plan is not None, x, x_inter)
            except Exception as exc:  # a plan whose kernels fail costs its own row only
                last = (str(exc).strip().splitlines() or [""])[-1][:160]
                print(f"{plan_name:<20} failed: {type(exc).__name__}: {last}", flush=True)
                if plan is None:  # no baseline, no speedups
                    return 1
                continue
            base_ms = base_ms or ms
            writer.writerow({"gpu": torch.cuda.get_device_name(), "plan": plan_name, "ms": ms,
                             "speedup_vs_fp16": base_ms / ms, "weight_bytes": nbytes, "max_rel_err": err})
            fh.flush()
            written += 1
            print(f"{plan_name:<20} {ms * 1e3:8.1f} us  x{base_ms / ms:.2f} vs fp16  {nbytes / 1e6:7.1f} MB  err {err:.1e}",
                  flush=True)
    return 0 if written > 1 else 1


if __name__ == "__main__":
    sys.exit(main())
