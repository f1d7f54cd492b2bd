"""The tables' DataFrames: one selected config and one paper row per method (a methods study)."""

import pytest

from conftest import ROOT
from helpers import METHODS, method_record, method_trials
from rest.report.export import paper_presentable
from rest.report.results import StudyResults
from rest.report.tables import best_configs, paper_table
from rest.study.runner import select_method_configs
from rest.study.space import load_space
from rest.study.trials import Trial


def _score(c):
    """ERM is best at lr 0.03, JTT at lambda 50, REST at density 0.1; PGD beats ERM on test."""
    bonus = {"ERM": c["lr"] == 0.1, "JTT": c["lambda_upweight"] == 50, "REST": c["density"] == 0.1}.get(
        c["extra"]["method"], 0
    )
    base = METHODS.index(c["extra"]["method"]) / 100
    return 0.2 + base + 0.1 * bonus, 0.1 + base + 0.05 * bonus + c["seed"] / 10_000


def test_each_method_gets_its_own_selected_config_and_one_paper_row():
    spec, _ = load_space(ROOT / "search_spaces" / "methods.yaml")
    search = method_trials(spec, "search", _score)
    confirm = select_method_configs(spec, search)
    assert len(confirm) == 2 * 6 * len(spec.confirm.seeds)
    chosen = {(c["conflict_pct"], c["extra"]["method"]): c for c in confirm}
    assert chosen[(1, "ERM")]["lr"] == 0.1 and chosen[(5, "JTT")]["lambda_upweight"] == 50
    assert chosen[(5, "REST")]["density"] == 0.1 and chosen[(5, "REST")]["lambda_upweight"] == 80
    assert all(c["epochs"] == spec.train.epochs and c["extra"]["role"] == "top1" for c in confirm)

    confirmed = [
        Trial(
            "confirm",
            f"c{i}",
            "TERMINATED",
            c,
            0,
            [method_record(e, *_score(c)) for e in range(1, spec.train.epochs + 1)],
        )
        for i, c in enumerate(confirm)
    ]
    study = StudyResults(None, spec, {"name": "methods", "phases": {}}, {"search": search, "confirm": confirmed})
    best = best_configs(study)
    assert list(best["row"]) == METHODS * 2 and set(best["status"]) == {"complete"}
    paper = paper_table([study])
    assert len(paper) == 12 and list(paper["method"][:6]) == METHODS
    pgd = paper[(paper["method"] == "PGD") & (paper["conflict_pct"] == 5)].iloc[0]
    assert pgd["seeds"] == 2 and pgd["conflicting"] == pytest.approx(
        100 * (0.1 + 0.02 + 0.00415)
    )  # mean of seeds 41, 42
    shown = paper_presentable(paper)
    assert list(shown["method"]) == METHODS  # one row per method, columns per cell
