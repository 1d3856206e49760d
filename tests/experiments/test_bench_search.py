"""The search benchmark's summary table and its config argument."""

import pytest

from layerbudget.experiments.bench_search import main, table


def _row(config, budget, searcher, seed, fitness, heldout):
    row = {"budget": budget, "searcher": searcher, "seed": seed, "evaluations": 10, "fitness": fitness, "heldout": heldout}
    if config is not None:
        row["config"] = config
    return row


def test_table_groups_by_config_budget_and_searcher():
    rows = [
        _row(None, 2.5, "hybrid", 0, 1.0, 2.0),  # written before rows named their config
        _row("minilm-quant", 2.5, "hybrid", 1, 3.0, 4.0),
        _row("minilm-gptq", 2.5, "hybrid", 0, 0.5, 0.7),
        _row("minilm-gptq", 3.0, "ilp", 0, 0.2, 0.3),
        _row("minilm-gptq", 3.0, "uniform", 0, 0.9, 1.1),
    ]
    lines = table(rows).splitlines()
    assert len(lines) == 1 + 4
    body = [line.split() for line in lines[1:]]
    # per config: budgets from high to low, searchers in benchmark order
    assert [b[:3] for b in body] == [
        ["minilm-gptq", "3.0", "uniform"],
        ["minilm-gptq", "3.0", "ilp"],
        ["minilm-gptq", "2.5", "hybrid"],
        ["minilm-quant", "2.5", "hybrid"],
    ]
    quant = body[3]
    assert quant[3] == "2"  # both default-config rows in one group
    assert quant[5:8] == ["2.0000", "±", "1.4142"]  # fitness mean ± std of 1 and 3
    assert quant[8:11] == ["3.0000", "±", "1.4142"]


def test_missing_config_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(tmp_path / "none.toml"), "--out", str(tmp_path / "out.json")])
    assert exc.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()
