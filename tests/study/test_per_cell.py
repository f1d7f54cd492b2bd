"""Per-cell scheduling keys: a trial's cell (and, in a methods study, its method)."""

from rest.study.per_cell import trial_cell


def test_methods_compete_only_within_their_own_cell_and_method():
    config = {"cfg": {"dataset": "colored_digits", "conflict_pct": 5.0, "extra": {"method": "PGD"}}}
    assert trial_cell(config, ["dataset", "conflict_pct"]) == ("colored_digits", 5.0, "PGD")
    assert trial_cell({"dataset": "d", "conflict_pct": 1.0}, ["dataset", "conflict_pct"]) == ("d", 1.0)
