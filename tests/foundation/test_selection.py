"""The one selection rule, on constructed ties, and every caller resolving a tie the same way."""

import math

import pandas as pd
import pytest

from rest import selection
from rest.report.results import StudyResults
from rest.storage import local
from rest.study.space import parse_space
from rest.study.trials import Trial, aggregate, trial_row


def rec(epoch, worst, avg, loss, conflict_n=20, align_n=980, conflict=None, align=None):
    return {
        "epoch": epoch,
        "val_worst_group_acc": worst,
        "val_avg_acc": avg,
        "val_loss": loss,
        "val_conflict_acc": worst if conflict is None else conflict,
        "val_align_acc": 1.0 if align is None else align,
        "val_conflict_count": conflict_n,
        "val_align_count": align_n,
        "test_worst_group_acc": worst / 2,
        "test_unbiased_acc": avg / 2,
    }


def test_epochs_tie_break_in_the_documented_order():
    # primary tie -> average accuracy decides
    assert selection.best_epoch([rec(1, 0.1, 0.9, 0.5), rec(2, 0.1, 0.95, 0.9)])["epoch"] == 2
    # primary and average tie -> lower loss decides, even against a later epoch
    assert selection.best_epoch([rec(1, 0.1, 0.9, 0.5), rec(2, 0.1, 0.9, 0.7)])["epoch"] == 1
    # everything ties -> the later epoch
    assert selection.best_epoch([rec(1, 0.1, 0.9, 0.5), rec(2, 0.1, 0.9, 0.5)])["epoch"] == 2
    # a higher primary wins whatever follows
    assert selection.best_epoch([rec(1, 0.2, 0.1, 9.0), rec(2, 0.1, 0.99, 0.1)])["epoch"] == 1
    # the average rule (REST's sparse runs)
    assert selection.best_epoch([rec(1, 0.2, 0.5, 0.5), rec(2, 0.1, 0.6, 0.5)], "average")["epoch"] == 2
    # nan ranks lowest
    assert selection.best_epoch([rec(1, math.nan, 0.9, 0.5), rec(2, 0.0, 0.1, 0.5)])["epoch"] == 2


def test_the_issue_case_an_untrained_epoch_without_a_tie_is_flagged():
    """6 conflicting validation samples: epoch 1 gets 1 right by luck and wins outright; the table must say so."""
    history = [
        rec(1, 1 / 6, 0.48, 2.2, conflict_n=6),
        rec(2, 0.0, 0.97, 0.3, conflict_n=6),
        rec(3, 0.0, 0.99, 0.1, conflict_n=6),
    ]
    best = selection.best_epoch(history)
    assert best["epoch"] == 1
    assert selection.deciding_group_size(best) == 6 < selection.SMALL_GROUP
    assert selection.deciding_group_size(best, "average") == 986


def test_scalar_orders_like_the_rule():
    records = [rec(1, 0.1, 0.9, 0.5), rec(2, 0.1, 0.95, 0.9), rec(3, 0.15, 0.2, 3.0), rec(4, 0.1, 0.95, 0.8)]
    by_key = sorted(records, key=lambda r: selection.rank_key(r)[:3])
    by_scalar = sorted(records, key=selection.scalar)
    assert [r["epoch"] for r in by_key] == [r["epoch"] for r in by_scalar]


def test_unknown_primary_lists_the_choices():
    with pytest.raises(ValueError, match="unknown selection 'best'; choose from worst_group, average"):
        selection.rank_key({}, "best")


SPEC = parse_space(
    "search: {conflict_pct: {grid: [1]}, density: {grid: [0.05, 0.1]}}\ntrain: {epochs: 2}\n"
    "scheduler: {type: none}\nconfirm: {top_k: 1, seeds: [1, 2]}\n"
)


def tied_study() -> StudyResults:
    """Two search trials tied on validation worst-group at their selected epochs; density 0.1 has the better average."""

    def trial(tid, density, history):
        config = {
            "dataset": "colored_digits",
            "conflict_pct": 1.0,
            "density": density,
            "lambda_upweight": 30.0,
            "reweight": "oracle",
            "sparse": "rigl",
            "seed": 42,
            "epochs": 2,
        }
        extra = {"nonzero_params": 1, "dense_params": 10, "inference_flops": 1, "dense_inference_flops": 10}
        return Trial("search", tid, "TERMINATED", config, 0, [{**r, **extra} for r in history])

    return StudyResults(
        local("."),
        SPEC,
        {"name": "tied", "phases": {}},
        {
            "search": [
                trial("a", 0.05, [rec(1, 0.2, 0.80, 0.5), rec(2, 0.2, 0.81, 0.6)]),
                trial("b", 0.1, [rec(1, 0.2, 0.85, 0.9), rec(2, 0.1, 0.99, 0.1)]),
            ],
            "confirm": [],
        },
    )


def test_a_constructed_tie_is_resolved_identically_everywhere():
    from rest.core.train import Trainer
    from rest.report.export import summary
    from rest.report.tables import best_configs, by_density
    from rest.study.runner import select_confirm_configs

    study = tied_study()
    # trainer: its incumbent round-trips through best_* keys and ranks as the rule ranks
    history = study.phases["search"][0].history
    expected = selection.best_epoch(history)
    trainer = Trainer.__new__(Trainer)
    trainer.best = {"best_epoch": 0}
    for r in history:
        if selection.better(r, trainer._incumbent()):
            trainer.best = {"best_epoch": r["epoch"], **{f"best_{k}": v for k, v in r.items() if k.startswith("val_")}}
    assert trainer.best["best_epoch"] == expected["epoch"] == 2  # tie on worst-group and... average decides: 0.81
    # trial rows carry the selected epoch
    rows = pd.DataFrame([trial_row(t, SPEC) for t in study.all_trials()])
    assert list(rows["best_epoch"]) == [2, 1]
    # confirm phase: density 0.1 (tie on 0.2 worst-group, average 0.85 > 0.81)
    confirm = select_confirm_configs(SPEC, study.all_trials())
    assert {c["density"] for c in confirm if c["extra"]["role"] == "top1"} == {0.1}
    assert [c["seed"] for c in confirm if c["extra"]["role"] == "top1"] == [1, 2]
    # export tables and the summary
    best = best_configs(study)
    assert best.iloc[0]["density"] == 0.1 and best.iloc[0]["row"] == "REST (selected)"
    assert len(by_density(study)) == 2
    assert "| REST (selected) | colored_digits | 1 | 0.1 |" in summary(study, best, "val")
    # and the aggregate keeps the trial-level names the rule reads
    table = aggregate(rows, ["conflict_pct", "density"])
    assert [table.iloc[i]["density"] for i in selection.rank(table.to_dict("records"), prefix="best_val_")] == [
        0.1,
        0.05,
    ]
