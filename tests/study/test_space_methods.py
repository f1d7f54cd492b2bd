"""Methods studies: the schema, and the expansion into each method's own grid per cell."""

import pytest

from conftest import ROOT
from helpers import METHODS
from rest.study.space import SpaceError, load_space, method_configs, parse_space


def test_the_methods_study_expands_each_methods_own_grid_per_cell():
    spec, _ = load_space(ROOT / "search_spaces" / "methods.yaml")
    assert [m.name for m in spec.methods] == METHODS
    configs = method_configs(spec)
    assert len(configs) == spec.grid_size() == 2 * 6 * 2  # cells x methods x each method's 2 configs
    by = {}
    for c in configs:
        by.setdefault((c["conflict_pct"], c["extra"]["method"]), []).append(c)
    assert set(by) == {(p, m) for p in (1, 5) for m in METHODS}
    assert {c["lr"] for c in by[(1, "ERM")]} == {0.03, 0.1} and {c["reweight"] for c in by[(1, "ERM")]} == {"none"}
    assert {c["pgd_norm"] for c in by[(5, "PGD")]} == {0.7, 2.0} and by[(5, "PGD")][0]["reweight"] == "pgd"
    assert all(c["sparse"] == "dcwp" and c["density"] == 0.1 for c in by[(1, "DCWP")])
    assert {c["lambda_upweight"] for c in by[(1, "REST")]} == {30} and {
        c["lambda_upweight"] for c in by[(5, "REST")]
    } == {80}
    assert {c["density"] for c in by[(5, "REST")]} == {0.02, 0.1}
    assert all(
        c["epochs"] == 3 and c["subsample"] == 1000 for c in configs
    )  # the study's fixed settings reach every method


@pytest.mark.parametrize("name, pcts", [("methods_cmnist", 4), ("methods_bffhq", 1)])
def test_real_data_methods_studies_are_valid(name, pcts):
    spec, _ = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    assert {"ERM", "JTT", "PGD", "DCWP", "REST"} <= {m.name for m in spec.methods}
    assert len(spec.search["conflict_pct"]["grid"]) == pcts


BASE = "search: {conflict_pct: {grid: [1, 5]}}\nmethods:\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            BASE + "  PGD: {train: {reweight: pgd}, search: {lr: {loguniform: [0.001, 0.1]}}}\n",
            "<study>:3: 'methods.PGD.search.lr' uses 'loguniform'; a method's search is a grid",
        ),
        (BASE + "  PGD: {train: {reweight: pgd}, serach: {}}\n", "<study>:3: 'methods.PGD.serach' is not a known key"),
        (
            BASE + "  PGD: {train: {reweight: pgd, conflict_pct: 5}}\n",
            "'methods.PGD.train.conflict_pct' is also under the study's search",
        ),
        (
            BASE + "  DCWP:\n    train: {sparse: dcwpp}\n",
            "<study>:3: 'methods.DCWP' has an invalid config: unknown sparse 'dcwpp'",
        ),
        (
            BASE + "  PGD: {train: {reweight: pgd}, search: {reweight: {grid: [pgd]}}}\n",
            "'methods.PGD.search.reweight' is also fixed",
        ),
        (
            BASE + "  REST:\n    search: {lambda_upweight: {lookup: {key: conflict_pct, table: {1: 30}}}}\n",
            "'methods.REST' has a lookup without an entry for 5.0",
        ),
        ("search: {conflict_pct: {choice: [1, 5]}}\nmethods: {ERM: {}}\n", "'search.conflict_pct' uses 'choice'"),
        ("search: {conflict_pct: {grid: [1]}}\nmethods: []\n", "'methods' must map method names"),
        (BASE + "  ERM: {}\nnum_samples: 2\n", "'num_samples' must be 1 in a methods study"),
    ],
)
def test_bad_methods_schema_names_the_key(text, message):
    with pytest.raises(SpaceError) as err:
        parse_space(text)
    assert message in str(err.value)
