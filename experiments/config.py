"""Experiment configuration: typed, frozen sections loaded from TOML and validated on load.

Unknown keys, wrong types, unknown option/searcher/fitness names and malformed budgets raise
:class:`LayerbudgetError` naming the key and what is expected. See ``experiments/default.toml``
for a complete, commented example.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from layerbudget.data import DEFAULT_CALIBRATION_WINDOWS, TextSpec
from layerbudget.errors import LayerbudgetError, Record, read_record
from layerbudget.evaluators.fitness import known_fitness
from layerbudget.families import known_families
from layerbudget.hf_load import check_device_name
from layerbudget.model import ModelSpec
from layerbudget.options import parse_options
from layerbudget.problem import Budget
from layerbudget.profiles.hardware import known_targets
from layerbudget.search.registry import known_searchers, read_params
from layerbudget.storage import cache_dir_or_default, content_hash, package_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_OPTIONS: tuple[str, ...] = tuple(
    ["dense"] + [f"rtn-b{b}-g{g}" for b in (2, 3, 4, 5, 6, 8) for g in (64, 128)]
)


ModelConfig = ModelSpec  # the [model] section is the model's spec


@dataclass(frozen=True)
class DataConfig:
    source: str = "pydoc"  # a built-in text ("pydoc", "docstrings") or a path to a UTF-8 text file
    seq_len: int = 128
    calib_windows: int = 16
    heldout_windows: int = 16  # per evaluation text: the calibration text's held-out part and each of eval_sources
    heldout_fraction: float = 0.2
    batch_size: int = 8
    eval_sources: tuple[str, ...] = ()  # further texts the final plans are measured on, each reported separately


@dataclass(frozen=True)
class OptionsConfig:
    names: tuple[str, ...] = DEFAULT_OPTIONS
    tie: bool = True  # q/k/v and gate/up share one option (what vLLM requires)
    # where GPTQ/SparseGPT/Wanda statistics come from: the dense model ("dense") or the model whose
    # earlier blocks already hold the same option ("compressed", GPTQ's sequential mode)
    calibration_inputs: str = "dense"
    # windows of those statistics (and of the output errors): up to this many calibration-part
    # windows other than the fitness windows (data.calib_windows)
    calibration_windows: int = DEFAULT_CALIBRATION_WINDOWS


@dataclass(frozen=True)
class LatencyConfig:
    target: str = ""  # "" = no latency table; cpu (measured here) or a GPU name (see profiles.hardware)
    tokens: int = 1  # M, rows per matmul: 1 = decode; e.g. 2048 = prefill of one 2048-token prompt


@dataclass(frozen=True)
class SearchConfig:
    searchers: tuple[str, ...] = ("uniform", "ilp")
    fitness: str = "auto"
    params: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def searcher_params(self, name: str) -> Record:
        """The typed parameters of searcher ``name`` (``[search.params.<name>]``, defaults elsewhere)."""
        return read_params(name, self.params.get(name, {}), f"search.params.{name}")


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = ""  # "ray" (a pool of evaluation actors), "inline" (this process); "" = $LAYERBUDGET_EXECUTOR or ray
    address: str = ""  # Ray cluster: "" = reuse or start a local one; "host:port", "ray://host:port", "auto"
    workers: int = 0  # 0 = cluster CPUs // threads_per_worker
    threads_per_worker: int = 0  # 0 = cluster CPUs // workers
    max_retries: int = 3  # re-runs of a chunk whose actor died
    ship_database: bool = False  # put the database in the object store (nodes without a shared cache)


ENV_EXECUTOR = "LAYERBUDGET_EXECUTOR"
RESULT_NEUTRAL = ("output", "executor")  # sections that do not change a run's results


def executor_kind(ex: ExecutorConfig) -> str:
    """The executor a run uses: ``executor.kind`` when set, else ``$LAYERBUDGET_EXECUTOR``, else ``ray``."""
    kind = ex.kind or os.environ.get(ENV_EXECUTOR, "") or "ray"
    if kind not in ("inline", "ray"):
        raise LayerbudgetError(f"${ENV_EXECUTOR} must be 'inline' or 'ray', but got {kind!r}")
    return kind


@dataclass(frozen=True)
class OutputConfig:
    dir: str = ""  # empty: runs/<name>-<timestamp>
    cache_dir: str = ""  # empty: $LAYERBUDGET_CACHE or ~/.cache/layerbudget


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "default"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    options: OptionsConfig = field(default_factory=OptionsConfig)
    budget: tuple[Budget, ...] = (Budget.from_dict({"avg_bits": 3.5}),)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        _validate(self)

    def text(self) -> TextSpec:
        """The token windows of this experiment (``[data]``, the seed, ``options.calibration_windows``)."""
        d = self.data
        return TextSpec(d.source, d.seq_len, d.calib_windows, d.heldout_windows, d.heldout_fraction, self.seed,
                        self.options.calibration_windows)

    def cache_dir(self) -> Path:
        """``output.cache_dir``, else ``$LAYERBUDGET_CACHE``, else ``~/.cache/layerbudget``."""
        return cache_dir_or_default(self.output.cache_dir)

    def fingerprint(self) -> str:
        """sha256 of what decides the results: every section but ``output`` and ``executor`` (where
        results are written and how many workers compute them), so a run resumes anywhere."""
        return content_hash({k: v for k, v in self.to_dict().items() if k not in RESULT_NEUTRAL})

    def to_dict(self) -> dict:
        """Plain data that :func:`config_from_dict` reads back to an equal config."""
        d = dataclasses.asdict(self)
        d["budget"] = [b.to_dict() for b in self.budget]
        d["options"]["names"] = list(self.options.names)
        d["data"]["eval_sources"] = list(self.data.eval_sources)
        d["search"]["searchers"] = list(self.search.searchers)
        d["search"]["params"] = {k: dict(v) for k, v in self.search.params.items()}
        return d


_SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "options": OptionsConfig,
    "latency": LatencyConfig,
    "search": SearchConfig,
    "executor": ExecutorConfig,
    "output": OutputConfig,
}


def _section(cls: type, data: object, where: str) -> object:
    if not isinstance(data, Mapping):
        raise LayerbudgetError(f"config section [{where}] must be a table, but got {data!r}")
    return read_record(cls, data, where, what="config key")


@dataclass(frozen=True)
class _Top:
    name: str = "default"
    seed: int = 0


def config_from_dict(data: Mapping[str, object]) -> ExperimentConfig:
    """Build and validate a config from plain data (a parsed TOML document)."""
    top = {"name", "seed", "budget", *_SECTIONS}
    unknown = sorted(set(data) - top)
    if unknown:
        raise LayerbudgetError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(top))}")
    top_keys = {k: data[k] for k in ("name", "seed") if k in data}
    kwargs: dict[str, object] = dict(vars(read_record(_Top, top_keys, "config", what="config key")))
    for key, cls in _SECTIONS.items():
        if key in data:
            kwargs[key] = _section(cls, data[key], key)
    if "budget" in data:
        raw = data["budget"]
        if isinstance(raw, Mapping):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise LayerbudgetError("config key budget must be one or more tables like [[budget]] avg_bits = 3.5")
        kwargs["budget"] = tuple(Budget.from_dict(b) for b in raw)
    return ExperimentConfig(**kwargs)  # type: ignore[arg-type]


def load_config(path: str | Path | None = None) -> ExperimentConfig:
    """Load a TOML experiment config; ``None`` loads the embedded default."""
    if path is None:
        text = (package_dir("layerbudget.experiments") / "default.toml").read_text()
        where = "the default config"
    else:
        p = Path(path)
        if not p.is_file():
            raise LayerbudgetError(f"config file {str(path)!r} does not exist")
        text = p.read_text(encoding="utf-8")
        where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LayerbudgetError(f"{where} is not valid TOML: {exc}") from None
    return config_from_dict(data)


def _validate(cfg: ExperimentConfig) -> None:
    if cfg.seed < 0:
        raise LayerbudgetError(f"seed must be a non-negative integer, but got {cfg.seed}")
    parse_options(list(cfg.options.names))
    if not cfg.options.names:
        raise LayerbudgetError("options.names must list at least one option")
    if not cfg.search.searchers:
        raise LayerbudgetError("search.searchers must list at least one searcher")
    for s in (*cfg.search.searchers, *cfg.search.params):
        if s not in known_searchers():
            raise LayerbudgetError(f"unknown searcher {s!r}; known: {', '.join(known_searchers())}")
    for s in cfg.search.params:
        cfg.search.searcher_params(s)  # a wrong parameter fails now, before anything is built
    if cfg.search.fitness not in ("auto", *known_fitness()):
        raise LayerbudgetError(f"unknown fitness {cfg.search.fitness!r}; known: auto, {', '.join(known_fitness())}")
    _validate_sweep(cfg.budget)
    ex = cfg.executor
    if ex.kind not in ("", "inline", "ray"):
        raise LayerbudgetError(f"executor.kind must be 'inline' or 'ray', but got {ex.kind!r}")
    for key in ("workers", "threads_per_worker", "max_retries"):
        if getattr(ex, key) < 0:
            raise LayerbudgetError(f"executor.{key} must be a non-negative integer, but got {getattr(ex, key)}")
    d = cfg.data
    for key in ("seq_len", "calib_windows", "heldout_windows", "batch_size"):
        if getattr(d, key) < 1:
            raise LayerbudgetError(f"data.{key} must be a positive integer, but got {getattr(d, key)}")
    if not 0 < d.heldout_fraction < 1:
        raise LayerbudgetError(f"data.heldout_fraction must be in (0, 1), but got {d.heldout_fraction}")
    for source in d.eval_sources:
        if not source.strip():
            raise LayerbudgetError("data.eval_sources must list text sources, but got an empty string")
        if source == d.source:
            raise LayerbudgetError(
                f"data.eval_sources lists the calibration text {source!r}; its held-out part is always evaluated"
            )
    if len(set(d.eval_sources)) != len(d.eval_sources):
        raise LayerbudgetError(f"data.eval_sources lists a text twice: {list(d.eval_sources)}")
    if cfg.options.calibration_windows < 1:
        raise LayerbudgetError(
            f"options.calibration_windows must be a positive integer, but got {cfg.options.calibration_windows}"
        )
    if cfg.options.calibration_inputs not in ("dense", "compressed"):
        raise LayerbudgetError(
            f"options.calibration_inputs must be 'dense' or 'compressed', but got {cfg.options.calibration_inputs!r}"
        )
    lat = cfg.latency
    if lat.target and lat.target not in known_targets():
        raise LayerbudgetError(f"unknown latency.target {lat.target!r}; known: {', '.join(known_targets())}")
    if lat.tokens < 1:
        raise LayerbudgetError(f"latency.tokens must be a positive integer, but got {lat.tokens}")
    if not lat.target and any("latency_us" in b.to_dict() for b in cfg.budget):
        raise LayerbudgetError("a latency_us budget needs [latency] target = cpu | h100 | h200 | a100 | l40s | rtx4090")
    if cfg.model.dtype not in ("float32", "float16", "bfloat16"):
        raise LayerbudgetError(f"model.dtype must be float32, float16 or bfloat16, but got {cfg.model.dtype!r}")
    check_device_name(cfg.model.device)
    if cfg.model.family != "auto" and cfg.model.family not in known_families():
        raise LayerbudgetError(f"unknown model.family {cfg.model.family!r}; known: auto, {', '.join(known_families())}")


def _validate_sweep(budgets: tuple[Budget, ...]) -> None:
    """A sweep names the same metrics in every budget, with no duplicates, in monotone order."""
    if len(budgets) < 2:
        return
    metrics = [tuple(sorted(b.to_dict())) for b in budgets]
    if len(set(metrics)) != 1:
        raise LayerbudgetError(f"every budget of a sweep must name the same metrics, but got {sorted(set(metrics))}")
    keys = [tuple(b.to_dict()[m] for m in metrics[0]) for b in budgets]
    if len(set(keys)) != len(keys):
        raise LayerbudgetError(f"a budget sweep lists a budget twice: {[str(b) for b in budgets]}")
    inc = all(a < b for a, b in zip(keys, keys[1:]))
    dec = all(a > b for a, b in zip(keys, keys[1:]))
    if not (inc or dec):
        raise LayerbudgetError(
            f"a budget sweep must be sorted (increasing or decreasing), but got {[str(b) for b in budgets]}"
        )
