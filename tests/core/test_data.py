"""Tests for calibration and held-out token windows: shapes, special tokens, disjointness, determinism."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerbudget.data import PYDOC, TokenSets, build_token_sets, load_documents
from layerbudget.errors import LayerbudgetError

SEQ = 128


def pydoc_text() -> str:
    from pydoc_data import topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def rows(t: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in t.tolist()}


def row_indices(pool: torch.Tensor, chosen: torch.Tensor) -> list[int]:
    """Index in ``pool`` of every row of ``chosen`` (each must be a row of the pool)."""
    index = {tuple(r): i for i, r in enumerate(pool.tolist())}
    return [index[tuple(r)] for r in chosen.tolist()]


def find_offsets(stream: np.ndarray, body: np.ndarray) -> list[int]:
    """Every offset where ``body`` occurs in the token ``stream``."""
    windows = np.lib.stride_tricks.sliding_window_view(stream, len(body))
    return np.flatnonzero((windows == body).all(axis=1)).tolist()


@pytest.fixture(scope="module")
def bert_tok(minilm):
    return minilm.tokenizer


@pytest.fixture(scope="module")
def pydoc_ids(bert_tok) -> np.ndarray:
    """The whole pydoc text as one token stream without special tokens."""
    return np.asarray(bert_tok(pydoc_text(), add_special_tokens=False, verbose=False)["input_ids"])


@pytest.fixture(scope="module")
def pydoc_sets(bert_tok) -> dict[int, TokenSets]:
    """Default-sized token sets (128 tokens, 16 + 16 windows) from pydoc for seeds 0 and 1, plus seed 0 again."""
    sets = {seed: build_token_sets(bert_tok, PYDOC, seed=seed) for seed in (0, 1)}
    sets[-1] = build_token_sets(bert_tok, PYDOC, seed=0)
    return sets


SENTENCES = [f"Sentence number {i} says that layer {i % 7} keeps {i * 3 % 11} bits." for i in range(120)]


# ---- pydoc with the MiniLM tokenizer ---------------------------------------------------------------


def test_pydoc_shapes_and_provenance(pydoc_sets) -> None:
    ts = pydoc_sets[0]
    assert ts.calib.shape == (16, SEQ) and ts.heldout.shape == (16, SEQ)
    assert ts.calib_pool.ndim == 2 and ts.calib_pool.shape[1] == SEQ and len(ts.calib_pool) >= 16
    for t in (ts.calib_pool, ts.calib, ts.heldout):
        assert t.dtype == torch.long
    assert ts.seq_len == SEQ
    assert ts.source == "pydoc"
    assert ts.text_hash == hashlib.sha256(pydoc_text().encode("utf-8")).hexdigest()


def test_pydoc_windows_are_cls_body_sep(pydoc_sets, bert_tok) -> None:
    cls, sep = bert_tok.cls_token_id, bert_tok.sep_token_id
    assert (cls, sep) == (101, 102)
    specials = torch.tensor(bert_tok.all_special_ids)
    for t in (pydoc_sets[0].calib_pool, pydoc_sets[0].calib, pydoc_sets[0].heldout, pydoc_sets[1].heldout):
        assert (t[:, 0] == cls).all() and (t[:, -1] == sep).all()
        assert not torch.isin(t[:, 1:-1], specials).any(), "special tokens inside a window body"


def test_pydoc_pool_is_the_token_stream_in_order(pydoc_sets, pydoc_ids) -> None:
    pool = pydoc_sets[0].calib_pool
    body = SEQ - 2
    assert np.array_equal(pool[:, 1:-1].reshape(-1).numpy(), pydoc_ids[: len(pool) * body])
    # the pool covers (about) the first 80% of the tokens and no more
    cut = round(len(pydoc_ids) * 0.8)
    assert len(pool) == cut // body


def test_pydoc_calib_and_heldout_share_no_window(pydoc_sets) -> None:
    for seed in (0, 1):
        ts = pydoc_sets[seed]
        assert not rows(ts.heldout) & rows(ts.calib_pool)
        assert not rows(ts.heldout) & rows(ts.calib)
        assert len(rows(ts.calib)) == len(ts.calib) and len(rows(ts.heldout)) == len(ts.heldout)


def test_pydoc_heldout_windows_come_from_the_tail(pydoc_sets, pydoc_ids) -> None:
    """Held-out windows lie after every calibration token, at one window grid, whatever the seed."""
    body = SEQ - 2
    pool_end = len(pydoc_sets[0].calib_pool) * body
    grids: set[int] | None = None
    for seed in (0, 1):
        for r in pydoc_sets[seed].heldout[:, 1:-1].numpy():
            found = [o for o in find_offsets(pydoc_ids, r) if o >= pool_end]  # pydoc repeats a few passages
            assert found, "a held-out window is not a piece of the held-out part of the text"
            residues = {o % body for o in found}
            grids = residues if grids is None else grids & residues
    assert grids, "held-out windows are not on one non-overlapping grid"


def test_same_seed_gives_identical_tensors(pydoc_sets) -> None:
    a, b = pydoc_sets[0], pydoc_sets[-1]
    for name in ("calib_pool", "calib", "heldout"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.text_hash == b.text_hash


def test_different_seed_changes_calibration_not_the_split(pydoc_sets) -> None:
    a, b = pydoc_sets[0], pydoc_sets[1]
    assert not torch.equal(a.calib, b.calib)
    assert torch.equal(a.calib_pool, b.calib_pool)  # the calibration part is seed-independent
    for ts in (a, b):
        idx = row_indices(ts.calib_pool, ts.calib)
        assert idx == sorted(idx) and len(set(idx)) == len(idx)  # distinct windows, in text order
        assert not rows(ts.heldout) & rows(a.calib_pool)


def test_fresh_calib_is_deterministic_and_bounded(pydoc_sets) -> None:
    ts = pydoc_sets[0]
    pool = ts.calib_pool
    a = ts.fresh_calib(8, np.random.default_rng(5))
    b = ts.fresh_calib(8, np.random.default_rng(5))
    assert a.shape == (8, SEQ) and torch.equal(a, b)
    idx = row_indices(pool, a)
    assert idx == sorted(idx) and len(set(idx)) == 8
    assert not torch.equal(a, ts.fresh_calib(8, np.random.default_rng(6)))
    rng = np.random.default_rng(5)
    first, second = ts.fresh_calib(8, rng), ts.fresh_calib(8, rng)
    assert torch.equal(first, a) and not torch.equal(second, a)  # the generator advances
    assert torch.equal(ts.fresh_calib(len(pool), np.random.default_rng(0)), pool)
    with pytest.raises(
        LayerbudgetError, match=rf"asked for {len(pool) + 1} calibration windows but the text gives"
    ):
        ts.fresh_calib(len(pool) + 1, np.random.default_rng(0))


def test_seq_len_beyond_max_positions_raises(bert_tok) -> None:
    with pytest.raises(LayerbudgetError, match="seq_len=600 exceeds the model's 512 positions"):
        build_token_sets(bert_tok, SENTENCES, seq_len=600, max_positions=512)
    ts = build_token_sets(
        bert_tok, SENTENCES * 8, seq_len=512, calib_windows=1, heldout_windows=1, max_positions=512
    )
    assert ts.seq_len == 512


# ---- other sources ---------------------------------------------------------------------------------


def test_list_of_strings_source(bert_tok) -> None:
    ts = build_token_sets(bert_tok, SENTENCES, seq_len=16, calib_windows=4, heldout_windows=2, seed=3)
    assert ts.calib.shape == (4, 16) and ts.heldout.shape == (2, 16)
    assert ts.source == "120 strings"
    assert ts.text_hash == hashlib.sha256("\n\n".join(SENTENCES).encode()).hexdigest()
    assert (ts.calib[:, 0] == bert_tok.cls_token_id).all() and (
        ts.heldout[:, -1] == bert_tok.sep_token_id
    ).all()
    assert not rows(ts.heldout) & rows(ts.calib_pool)


def test_text_file_source_matches_the_same_text_as_a_list(bert_tok, tmp_path) -> None:
    text = "\n\n".join(SENTENCES)
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    from_file = build_token_sets(bert_tok, str(path), seq_len=16, calib_windows=4, heldout_windows=2)
    from_list = build_token_sets(bert_tok, [text], seq_len=16, calib_windows=4, heldout_windows=2)
    assert from_file.source == str(path)
    assert from_file.text_hash == from_list.text_hash
    for name in ("calib_pool", "calib", "heldout"):
        assert torch.equal(getattr(from_file, name), getattr(from_list, name))


def test_load_documents_sources(tmp_path) -> None:
    docs, name = load_documents(PYDOC)
    assert name == "pydoc" and len(docs) > 50 and all(isinstance(d, str) for d in docs)
    path = tmp_path / "a.txt"
    path.write_text("héllo wörld", encoding="utf-8")
    assert load_documents(str(path)) == (["héllo wörld"], str(path))
    assert load_documents(("a", "b")) == (["a", "b"], "2 strings")


@pytest.mark.parametrize(
    "source",
    [
        "no/such/file.txt",
        "a raw text passed by mistake instead of a path " * 100,
    ],
    ids=lambda s: s if len(s) < 40 else "long",
)
def test_missing_text_file_raises(bert_tok, source: str) -> None:
    with pytest.raises(LayerbudgetError, match=r"neither a built-in text \(pydoc, docstrings\) nor an existing text file") as info:
        build_token_sets(bert_tok, source)
    if len(source) < 40:
        assert repr(source) in str(info.value)


def test_bad_text_sources_raise(bert_tok, tmp_path) -> None:
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81 not utf-8")
    with pytest.raises(LayerbudgetError, match="is not UTF-8 text"):
        build_token_sets(bert_tok, str(binary))
    with pytest.raises(LayerbudgetError, match="must hold only strings"):
        build_token_sets(bert_tok, ["fine", 3])
    with pytest.raises(LayerbudgetError, match=r"neither a built-in text \(pydoc, docstrings\) nor an existing text file"):
        build_token_sets(bert_tok, str(tmp_path))  # a directory is not a text file


@pytest.mark.parametrize(
    "source,kwargs,where",
    [
        (["hello world"], {}, "calibration"),
        ([], {}, "calibration"),
        (SENTENCES[:20], {"seq_len": 16, "calib_windows": 4, "heldout_windows": 50}, "held-out"),
        (SENTENCES[:20], {"seq_len": 16, "calib_windows": 500, "heldout_windows": 1}, "calibration"),
    ],
    ids=["one-line", "empty", "heldout", "calib"],
)
def test_too_short_text_raises(bert_tok, source, kwargs, where) -> None:
    with pytest.raises(LayerbudgetError, match="too short") as info:
        build_token_sets(bert_tok, source, **kwargs)
    assert where in str(info.value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"heldout_fraction": 0.0}, "heldout_fraction must be in"),
        ({"heldout_fraction": 1.0}, "heldout_fraction must be in"),
        ({"seq_len": 1}, "seq_len must be at least 2"),
        ({"seq_len": 2}, "leaves no room next to 2 special tokens"),
        ({"calib_windows": 0}, "must be at least 1"),
        ({"heldout_windows": 0}, "must be at least 1"),
    ],
    ids=["fraction0", "fraction1", "seq1", "seq2-no-body", "calib0", "heldout0"],
)
def test_invalid_arguments_raise(bert_tok, kwargs, message) -> None:
    with pytest.raises(LayerbudgetError, match=message):
        build_token_sets(bert_tok, SENTENCES, **kwargs)


# ---- tokenizers without [CLS]/[SEP] ----------------------------------------------------------------


def test_gpt2_style_tokenizer_adds_no_special_tokens(gpt2_tokenizer) -> None:
    text = "\n\n".join(SENTENCES)
    ids = gpt2_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert (
        gpt2_tokenizer("layerbudget", add_special_tokens=True)["input_ids"]
        == gpt2_tokenizer("layerbudget", add_special_tokens=False)["input_ids"]
    )
    ts = build_token_sets(gpt2_tokenizer, SENTENCES, seq_len=16, calib_windows=4, heldout_windows=2)
    pool = ts.calib_pool
    assert torch.equal(pool.reshape(-1), torch.tensor(ids[: pool.numel()]))  # raw stream, no specials
    eos = gpt2_tokenizer.eos_token_id
    for t in (pool, ts.calib, ts.heldout):
        assert not (t == eos).any()
    stream = np.asarray(ids)
    for r in ts.heldout.numpy():  # every held-out window is a piece of the stream after the pool
        assert any(o >= pool.numel() for o in find_offsets(stream, r))


def test_bos_only_tokenizer_prefixes_every_window(bos_tokenizer) -> None:
    bos = bos_tokenizer.bos_token_id
    ts = build_token_sets(bos_tokenizer, SENTENCES, seq_len=16, calib_windows=4, heldout_windows=2)
    for t in (ts.calib_pool, ts.calib, ts.heldout):
        assert (t[:, 0] == bos).all() and not (t[:, 1:] == bos).any()
    ids = bos_tokenizer("\n\n".join(SENTENCES), add_special_tokens=False)["input_ids"]
    body = ts.calib_pool[:, 1:].reshape(-1)
    assert torch.equal(body, torch.tensor(ids[: body.numel()]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seq_len=st.integers(2, 40),
    n_calib=st.integers(1, 6),
    n_held=st.integers(1, 3),
    fraction=st.floats(0.1, 0.6),
    seed=st.integers(0, 2**32 - 1),
)
def test_windows_invariants(gpt2_tokenizer, seq_len, n_calib, n_held, fraction, seed) -> None:
    """For any sizes: either a clear "too short" error, or disjoint windows cut from the stream in order."""
    try:
        ts = build_token_sets(
            gpt2_tokenizer,
            SENTENCES[:60],
            seq_len=seq_len,
            calib_windows=n_calib,
            heldout_windows=n_held,
            heldout_fraction=fraction,
            seed=seed,
        )
    except LayerbudgetError as exc:
        assert "too short" in str(exc)
        return
    ids = gpt2_tokenizer("\n\n".join(SENTENCES[:60]), add_special_tokens=False)["input_ids"]
    cut = round(len(ids) * (1 - fraction))
    assert ts.calib.shape == (n_calib, seq_len) and ts.heldout.shape == (n_held, seq_len)
    assert len(ts.calib_pool) == cut // seq_len
    assert torch.equal(ts.calib_pool.reshape(-1), torch.tensor(ids[: len(ts.calib_pool) * seq_len]))
    held = [ids[cut + i : cut + i + seq_len] for i in range(0, len(ids) - cut - seq_len + 1, seq_len)]
    held_pool = torch.tensor(held).reshape(-1, seq_len)
    for pool, chosen, n in ((ts.calib_pool, ts.calib, n_calib), (held_pool, ts.heldout, n_held)):
        assert rows(chosen) <= rows(pool)
        if len(rows(pool)) == len(pool):  # short windows may repeat; order is only checkable when unique
            idx = row_indices(pool, chosen)
            assert idx == sorted(idx) and len(set(idx)) == n


# ---- the database's calibration windows ------------------------------------------------------------


def test_database_windows_are_other_calibration_windows(bert_tok) -> None:
    ts = build_token_sets(bert_tok, PYDOC, seq_len=32, calib_windows=8, heldout_windows=4, seed=5, db_windows=40)
    assert ts.db_calib.shape == (40, 32)
    assert rows(ts.db_calib) <= rows(ts.calib_pool)
    assert not rows(ts.db_calib) & rows(ts.calib)  # never the windows the fitness scores on
    again = build_token_sets(bert_tok, PYDOC, seq_len=32, calib_windows=8, heldout_windows=4, seed=5, db_windows=40)
    assert torch.equal(again.db_calib, ts.db_calib)
    other = build_token_sets(bert_tok, PYDOC, seq_len=32, calib_windows=8, heldout_windows=4, seed=6, db_windows=40)
    assert not torch.equal(other.db_calib, ts.db_calib)
    # drawn after the fitness and held-out windows, so their number never moves those
    fewer = build_token_sets(bert_tok, PYDOC, seq_len=32, calib_windows=8, heldout_windows=4, seed=5, db_windows=3)
    assert torch.equal(fewer.calib, ts.calib) and torch.equal(fewer.heldout, ts.heldout)
    assert fewer.db_calib.shape == (3, 32)


def test_database_windows_take_what_is_left(bert_tok) -> None:
    ts = build_token_sets(bert_tok, SENTENCES, seq_len=16, calib_windows=4, heldout_windows=2, db_windows=10_000)
    pool = len(ts.calib_pool)
    assert ts.db_calib.shape[0] == pool - 4
    assert rows(ts.db_calib) | rows(ts.calib) == rows(ts.calib_pool)
    every = build_token_sets(bert_tok, SENTENCES, seq_len=16, calib_windows=pool, heldout_windows=2)
    assert torch.equal(every.db_calib, every.calib)  # nothing left: the fitness windows themselves
    with pytest.raises(LayerbudgetError, match="calibration_windows must be at least 1"):
        build_token_sets(bert_tok, SENTENCES, seq_len=16, calib_windows=4, heldout_windows=2, db_windows=0)
