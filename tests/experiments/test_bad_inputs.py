"""Bad input as a user meets it: `layerbudget run` prints one `error:` line, exits 2, leaves nothing.

Every case runs the command line in a subprocess from its own working directory with its own empty
``LAYERBUDGET_CACHE`` and checks: exit code 2; stderr ends in exactly one ``error: …`` line that
names the problem, with no traceback and no foreign lines (Python warnings, transformers' load
report) before it; the working directory holds exactly what it held before (no run directory, no
``RUN.partial``, no temporary sibling); the cache holds nothing — or, for the cases that fail after
the database was built, only complete entries that verify. Then the corrected run into the same
``--out`` succeeds (in this process: the point is what the failure left on disk).

The failing runs of the selected cases are started by a module fixture, a few at a time: most of
their time is spent importing torch and transformers.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model

from layerbudget.experiments.cli import main
from layerbudget.experiments.runner import partial_dir
from layerbudget.plan import Plan
from layerbudget.profiles.database import open_database
from layerbudget.storage import file_hash

OUT = "run"  # every case runs with --out run, relative to its working directory
BASE: dict = {
    "name": "bad-input",
    "model": {"id": "<models>/llama"},
    "data": {"seq_len": 16, "calib_windows": 2, "heldout_windows": 2, "batch_size": 2},
    "options": {"names": ["rtn-b2-g32", "rtn-b4-g32", "rtn-b8-g32"], "calibration_windows": 4},
    "budget": [{"avg_bits": 4.5}],
    "search": {"searchers": ["uniform"]},  # one quick searcher: the corrected runs take a second
}
DELETE = object()
# lines a failing run may print before its error: the project's own progress lines and notes
OWN_LINES = re.compile(r"^(note|database|executor|profile|latency): ")


# ----- building configs and damaged inputs --------------------------------------------------------
def toml_text(cfg: dict) -> str:
    """TOML for the plain data of a config (JSON spells TOML's strings, numbers, booleans and arrays)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in cfg.items() if not _is_table(v) and not _is_tables(v)]
    for key, value in cfg.items():
        if _is_table(value):
            _table(lines, key, value)
        elif _is_tables(value):
            for item in value:
                lines.append(f"[[{key}]]")
                lines.extend(f"{k} = {json.dumps(v)}" for k, v in item.items())
    return "\n".join(lines) + "\n"


def _is_table(v: object) -> bool:
    return isinstance(v, dict)


def _is_tables(v: object) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _table(lines: list[str], name: str, table: dict) -> None:
    lines.append(f"[{name}]")
    lines.extend(f"{k} = {json.dumps(v)}" for k, v in table.items() if not _is_table(v))
    for k, v in table.items():
        if _is_table(v):
            _table(lines, f"{name}.{k}", v)


def configured(overrides: dict, models: Path) -> dict:
    """The base config with dotted-key ``overrides`` applied (``DELETE`` removes a key)."""
    cfg = copy.deepcopy(BASE)
    cfg["model"]["id"] = (models / "llama").as_posix()
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return cfg


def model_copy(work: Path, models: Path, name: str = "llama") -> Path:
    target = work / "model"
    shutil.copytree(models / name, target)
    return target


def model_case(edit: Callable[[Path], None], name: str = "llama") -> Callable[[Path, Path], dict]:
    """A case whose model directory is a copy of a tiny model changed by ``edit``."""

    def prepare(work: Path, models: Path) -> dict:
        path = model_copy(work, models, name)
        edit(path)
        return {"model.id": path.as_posix()}

    return prepare


def truncate_weights(path: Path) -> None:
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def edit_weights(path: Path, change: Callable[[dict], None]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def nan_weight(tensors: dict) -> None:
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")


def drop_block_weight(tensors: dict) -> None:
    del tensors["model.layers.0.self_attn.v_proj.weight"]


def edit_config(path: Path, **changes: object) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def text_case(content: bytes) -> Callable[[Path, Path], dict]:
    def prepare(work: Path, models: Path) -> dict:
        (work / "text.txt").write_bytes(content)
        return {"data.source": (work / "text.txt").as_posix()}

    return prepare


def existing_out(work: Path, models: Path) -> dict:
    (work / OUT).mkdir()
    (work / OUT / "keep.txt").write_text("an earlier run\n")
    return {}


def cuda_device() -> str:
    """A CUDA device this torch cannot use: plain ``cuda`` without CUDA, else one index too many."""
    return "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


@dataclass(frozen=True)
class Case:
    """One bad input: what to change, what the error line must say, and the correction."""

    message: str  # a part of the error line
    set: dict = field(default_factory=dict)  # dotted config keys changed from BASE
    args: tuple[str, ...] = ()  # extra command-line arguments
    prepare: Callable[[Path, Path], dict] | None = None  # writes files into the working directory
    raw: str | None = None  # the config file's text instead of BASE (TOML syntax errors)
    config: str | None = None  # run this config path instead of the written one
    fixed: dict = field(default_factory=dict)  # dotted keys of the corrected config (default: BASE)
    fixed_args: tuple[str, ...] = ()
    builds: bool = False  # fails after the database was built: complete cache entries may remain


CASES: dict[str, Case] = {
    # the config file
    "config file missing": Case("config file 'missing.toml' does not exist", config="missing.toml"),
    "config not TOML": Case("is not valid TOML", raw='name = "x"\n[model\n'),
    "unknown top-level key": Case("unknown config key(s) colour", set={"colour": "red"}),
    "unknown section key": Case("unknown config key(s) data.window", set={"data.window": 3}),
    "wrong type": Case("data.seq_len must be an integer, but got 'long'", set={"data.seq_len": "long"}),
    "section not a table": Case("config section [search] must be a table", set={"search": "fast"}),
    "negative seed": Case("seed must be a non-negative integer", set={"seed": -1}),
    # options
    "unknown bits": Case("supported bits are", set={"options.names": ["rtn-b7-g32"]}),
    "unknown option": Case("unknown option 'quantize-4'", set={"options.names": ["quantize-4"]}),
    "option twice": Case("option 'rtn-b4-g32' is listed twice", set={"options.names": ["rtn-b4-g32", "rtn-b4-g32"]}),
    "no options": Case("options.names must list at least one option", set={"options.names": []}),
    "calibration inputs": Case("options.calibration_inputs must be 'dense' or 'compressed'",
                               set={"options.calibration_inputs": "random"}),
    "calibration windows": Case("options.calibration_windows must be a positive integer",
                                set={"options.calibration_windows": 0}),
    # search
    "unknown searcher": Case("unknown searcher 'magic'", set={"search.searchers": ["uniform", "magic"]}),
    "unknown fitness": Case("unknown fitness 'accuracy'", set={"search.fitness": "accuracy"}),
    "fitness for another task": Case("fitness 'embedding_cos' is for encoder models, but this model is causal",
                                     set={"search.fitness": "embedding_cos"}),
    "bad evolution parameter": Case(
        "unknown parameter(s) search.params.evolution.colour;",
        set={"search.searchers": ["uniform", "evolution"], "search.params": {"evolution": {"colour": 1}}},
        fixed={"search.searchers": ["uniform", "evolution"],
               "search.params": {"evolution": {"generations": 2, "offspring": 4, "stages": [[2, 1], [1, 2]]}}},
    ),
    "bad hybrid parameter": Case(  # named as the user wrote it, not as the evolution inside the hybrid
        "unknown parameter(s) search.params.hybrid.colour;",
        set={"search.searchers": ["uniform", "hybrid"], "search.params": {"hybrid": {"colour": 1}}},
    ),
    "fresh windows beyond the text": Case(
        "asks for batches of 1000000 fresh calibration windows", builds=True,
        set={"search.searchers": ["uniform", "hybrid"], "search.params": {"hybrid": {"validation_windows": 1000000}}},
    ),
    "parameters of an unknown searcher": Case("unknown searcher 'magic'", set={"search.params": {"magic": {"n": 1}}}),
    # budgets
    "infeasible budget": Case("budget avg_bits<=1 is infeasible: with these options avg_bits ranges from 3 to 16",
                              set={"budget": [{"avg_bits": 1.0}]}),
    "infeasible sparsity": Case("budget sparsity>=0.5 is infeasible", set={"budget": [{"sparsity": 0.5}]}),
    "dropped without drop": Case("budget dropped>=1 is infeasible", set={"budget": [{"dropped": 1}]}),
    "options that do not fit (K=352)": Case(
        "rtn-b2-g128, rtn-b3-g128, rtn-b4-g128 do not apply to model.layers.{0-1}.mlp.down_proj "
        "(group size 128 does not divide K=352; g32 or gch would fit); if they applied, avg_bits would range from about",
        set={"model.id": "<llama352>", "options.names": ["rtn-b2-g128", "rtn-b3-g128", "rtn-b4-g128"],
             "budget": [{"avg_bits": 3.0}]},
        fixed={"model.id": "<llama352>", "options.names": ["rtn-b2-g128", "rtn-b4-g128", "rtn-b2-g32", "rtn-b4-g32"],
               "budget": [{"avg_bits": 3.0}]},
    ),
    "unknown budget metric": Case("unknown budget metric 'speed'", set={"budget": [{"speed": 3}]}),
    "budget not a table": Case("config key budget must be one or more tables", set={"budget": 3}),
    "unsorted sweep": Case("a budget sweep must be sorted",
                           set={"budget": [{"avg_bits": 4.0}, {"avg_bits": 6.0}, {"avg_bits": 5.0}]}),
    "latency budget without target": Case("a latency_us budget needs [latency] target",
                                          set={"budget": [{"latency_us": 10.0}]}),
    "unknown latency target": Case("unknown latency.target 'tpu'", set={"latency.target": "tpu"}),
    "drop without droppable sub-blocks": Case(
        "option 'drop' needs droppable sub-blocks",
        set={"model.id": "<opt-postln>", "options.names": ["rtn-b4-g32", "drop"]},
        fixed={"model.id": "<opt-postln>"},
    ),
    # data
    "text file missing": Case("is neither a built-in text (pydoc, docstrings) nor an existing text file", set={"data.source": "no-such-text.txt"}),
    "text file empty": Case("is too short", prepare=text_case(b"")),
    "text file binary": Case("is not UTF-8 text", prepare=text_case(bytes(range(128, 256)) * 64)),
    "text too short": Case("is too short", prepare=text_case(b"only a few words here")),
    "seq_len beyond positions": Case("data.seq_len=128 exceeds the model's 64 positions", set={"data.seq_len": 128}),
    "heldout fraction": Case("data.heldout_fraction must be in (0, 1)", set={"data.heldout_fraction": 1.5}),
    "batch size": Case("data.batch_size must be a positive integer", set={"data.batch_size": 0}),
    # the model
    "model path missing": Case("model path './no/such/model' does not exist", set={"model.id": "./no/such/model"}),
    "hub id offline": Case("could not load model 'some-org/some-model'", set={"model.id": "some-org/some-model"}),
    "directory without config.json": Case("has no config.json", prepare=model_case(lambda p: (p / "config.json").unlink())),
    "config.json not JSON": Case("could not load model", prepare=model_case(lambda p: (p / "config.json").write_text("{not json"))),
    "config.json wrong value type": Case("could not load model", prepare=model_case(lambda p: edit_config(p, hidden_size="abc"))),
    "unsupported model type": Case("model type 't5' is not supported",
                                   prepare=model_case(lambda p: (p / "config.json").write_text('{"model_type": "t5"}'))),
    "no weights": Case("could not load the weights", prepare=model_case(lambda p: (p / "model.safetensors").unlink())),
    "truncated safetensors": Case("could not load the weights of model", prepare=model_case(truncate_weights)),
    "weights of another config": Case("do not belong together",
                                      prepare=model_case(lambda p: edit_config(p, intermediate_size=96))),
    "block weight missing": Case("the checkpoint lacks 1 weight of the transformer blocks",
                                 prepare=model_case(lambda p: edit_weights(p, drop_block_weight))),
    "NaN weights": Case("has NaN or Inf weights", prepare=model_case(lambda p: edit_weights(p, nan_weight))),
    "no tokenizer": Case("has no usable tokenizer",
                         prepare=model_case(lambda p: [f.unlink() for f in p.glob("tokenizer*")])),
    "unknown family": Case("unknown model.family 'gpt5'", set={"model.family": "gpt5"}),
    "bert family on a Llama": Case("model.family is 'bert', but model", set={"model.family": "bert"}),
    "device tpu9": Case("model.device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu', but got 'tpu9'",
                        set={"model.device": "tpu9"}),
    "device without CUDA": Case("model.device is", set={"model.device": cuda_device()}),
    "dtype": Case("model.dtype must be float32, float16 or bfloat16", set={"model.dtype": "float8"}),
    # executor and command line
    "executor kind": Case("executor.kind must be 'inline' or 'ray'", set={"executor.kind": "gpu"}),
    "unreachable --ray-address": Case("cannot reach a Ray cluster at '127.0.0.1:1'", args=("--ray-address", "127.0.0.1:1")),
    "malformed Ray address": Case("Ray address must look like host:port", args=("--ray-address", "nowhere")),
    "--workers 0": Case("--workers must be at least 1", args=("--workers", "0")),
    "--workers with inline": Case("need the Ray executor", args=("--executor", "inline", "--workers", "2")),
    "--seed -1": Case("--seed must be a non-negative integer", args=("--seed", "-1")),
    "--threads 0": Case("--threads must be at least 1", args=("--threads", "0")),
    "--resume without a run": Case("has no unfinished run to resume", args=("--resume", OUT)),
    "--resume and another --out": Case("--resume RUN_DIR already names the run directory", args=("--resume", "other")),
    "existing output directory": Case("exists; pass --overwrite", prepare=existing_out, fixed_args=("--overwrite",)),
}


# ----- running the cases ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory, gpt2_tokenizer) -> Path:
    """Tiny models on disk: a Llama, a Llama with K = 352 down projections, a post-LN OPT."""
    root = tmp_path_factory.mktemp("models")
    for name, kind, overrides in (
        ("llama", "llama", {}),
        ("llama352", "llama", {"hidden_size": 128, "intermediate_size": 352, "head_dim": 32}),
        ("opt-postln", "opt", {"do_layer_norm_before": False}),
    ):
        build_tiny_model(kind, **overrides).save_pretrained(root / name)
        gpt2_tokenizer.save_pretrained(root / name)
    return root


def resolve_models(cfg: dict, models: Path) -> dict:
    mid = cfg.get("model", {}).get("id") if isinstance(cfg.get("model"), dict) else None
    if isinstance(mid, str) and mid.startswith("<") and mid.endswith(">"):
        cfg["model"]["id"] = (models / mid[1:-1]).as_posix()
    return cfg


def cli() -> list[str]:
    """The installed console script, as a user runs it (``python -m`` where there is none)."""
    script = Path(sys.executable).with_name("layerbudget")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "layerbudget.experiments.cli"]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@dataclass
class Failure:
    work: Path
    cache: Path
    before: dict
    returncode: int
    stdout: str
    stderr: str


def run_failing(name: str, root: Path, models: Path) -> Failure:
    case = CASES[name]
    work, cache = root / "work", root / "cache"
    work.mkdir()
    cache.mkdir()
    overrides = dict(case.set)
    if case.prepare is not None:
        overrides.update(case.prepare(work, models))
    config = work / "exp.toml"
    config.write_text(case.raw if case.raw is not None else toml_text(resolve_models(configured(overrides, models), models)))
    before = snapshot(work)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(LAYERBUDGET_CACHE=str(cache), LAYERBUDGET_EXECUTOR="inline", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [*cli(), "run", case.config or config.name, "--quiet", "--out", OUT, *case.args]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    return Failure(work, cache, before, proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def failures(request, models, tmp_path_factory) -> dict[str, Failure]:
    """The failing run of every selected case, a few at a time."""
    here = Path(__file__).resolve()
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if Path(str(item.fspath)).resolve() == here and "case" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    roots = {name: tmp_path_factory.mktemp("case") for name in selected}
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        futures = {name: pool.submit(run_failing, name, roots[name], models) for name in selected}
        return {name: f.result() for name, f in futures.items()}


def assert_cache_harmless(cache: Path, may_hold_entries: bool) -> None:
    """Nothing in ``cache``, or (after a build) only complete entries that verify; no temporaries."""
    files = [p for p in cache.rglob("*") if p.is_file()]
    if not may_hold_entries:
        assert files == [], f"cache entries left: {[p.relative_to(cache).as_posix() for p in files]}"
        return
    assert not [p for p in cache.rglob(".*")], "temporary files left in the cache"
    for root in (cache / "db").glob("*"):
        open_database(root)  # raises when incomplete or corrupted
    for table in [*(cache / "profile").glob("*.parquet"), *(cache / "latency").glob("*.parquet")]:
        assert file_hash(table) == table.with_suffix(".sha256").read_text().strip(), table


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_one_error_line_nothing_left_and_the_corrected_run_succeeds(
    case, failures, models, monkeypatch, capsys
):
    spec, failed = CASES[case], failures[case]
    output = failed.stdout + failed.stderr
    assert failed.returncode == 2, output
    lines = [ln for ln in failed.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], output
    assert "Traceback" not in output and failed.stdout.strip() == "", output
    foreign = [ln for ln in lines[:-1] if not OWN_LINES.match(ln)]
    assert foreign == [], output
    assert spec.message in errors[0], errors[0]

    assert snapshot(failed.work) == failed.before, "the failed run left files behind"
    assert not partial_dir(failed.work / OUT).exists(), ".partial left"
    assert_cache_harmless(failed.cache, spec.builds)

    fixed = failed.work / "fixed.toml"
    fixed.write_text(toml_text(resolve_models(configured(spec.fixed, models), models)))
    monkeypatch.chdir(failed.work)
    monkeypatch.setenv("LAYERBUDGET_CACHE", str(failed.cache))
    rc = main(["run", fixed.name, "--quiet", "--out", OUT, *spec.fixed_args])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert Plan.load(failed.work / OUT / "plan.json").searcher
    assert not partial_dir(failed.work / OUT).exists()
