"""The report's tables, as DataFrames: what the selection rule picked, per cell, per density, in the paper's layout.

Everything comes from the study reader (``rest.report.results``) and every choice from
the selection rule (``rest.selection``): per cell, configs are ranked on the mean
over seeds of their selected epochs' validation numbers; the tables report those
epochs' test numbers (mean and standard error over seeds, as fractions). With
``ranking="oracle"`` configs are ranked on test worst-group accuracy instead, and every
table says ORACLE. Writing them (markdown, csv, LaTeX, the summary) is ``rest.report.export``'s.

Tables: best_configs (selected config per cell and both baselines, with REST's gain over
each; per cell and method for a methods study), by_density, paper_table (the LfF / DisEnt / REST layout).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rest import selection
from rest.report.results import StudyResults, aggregate, search_configs
from rest.study.failures import add_failed_column, cell_failures, failures_of, missing_rows
from rest.study.space import StudySpec

# Metrics shown in tables, by their record names (fractions in records, percent in tables).
TABLE_METRICS = [
    "val_worst_group_acc", "test_worst_group_acc", "test_unbiased_acc", "test_conflict_acc", "test_align_acc",
    "test_worst_class_bias_acc", "test_balanced_acc",
]  # fmt: skip
BINS_PER_DECADE = 4  # by_density's log-scale bins for sampled densities
BASELINE_ROLES = {"erm_baseline": "ERM (dense)", "dense_reweighted_baseline": "dense reweighted"}


# The columns of a row whose configs all failed (so tables keep their shape when every trial failed).
NO_RESULT = {
    "seeds": 0,
    "deciding_group_size": math.nan,
    "nonzero_rel": math.nan,
    "flops_rel": math.nan,
    "stopped_early": 0,
    **{f"best_{m}{se}": math.nan for m in TABLE_METRICS for se in ("", "_se")},
}


def ranked_by(spec: StudySpec, ranking: str) -> tuple[str, str]:
    """(primary metric, record prefix) of a ranking: validation as the study says, or oracle."""
    if ranking == "oracle":
        return "worst_group", selection.RANKING_PREFIXES["oracle"]
    return spec.train.selection, selection.RANKING_PREFIXES["val"]


def selection_pool(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that finished at least one epoch: the confirm phase's if it has any, else the search phase's."""
    ran = trials[trials["epochs_run"] > 0]
    confirm = ran[ran["phase"] == "confirm"]
    return confirm if not confirm.empty else ran[ran["phase"] == "search"]


def _gain(a: pd.Series, b: pd.Series | None, metric: str) -> tuple[float, float]:
    """a - b (fractions, like the metrics), with the standard error of a difference of independent means."""
    if b is None:
        return math.nan, math.nan
    gain = a[metric] - b[metric]
    se = math.sqrt(np.nansum([a.get(f"{metric}_se", math.nan) ** 2, b.get(f"{metric}_se", math.nan) ** 2]))
    return gain, se if (a.get("seeds", 1) > 1 and b.get("seeds", 1) > 1) else math.nan


def best_configs(study: StudyResults, ranking: str = "val") -> pd.DataFrame:
    """Per cell: the selected config (mean over confirm seeds), both baselines, and REST's gain over each.

    A methods study has one row per cell and method instead (``best_per_method``).
    """
    spec = study.spec
    if spec.methods:
        return best_per_method(study, ranking)
    cells = spec.compare_within
    trials = study.trials()
    pool = selection_pool(trials)
    confirmed = (pool["phase"] == "confirm").any()
    groups = (
        aggregate(pool, cells + spec.searched_keys() + ["role"]) if not pool.empty else pd.DataFrame(columns=["role"])
    )
    primary, prefix = ranked_by(spec, ranking)
    candidates = groups[~groups["role"].isin(list(BASELINE_ROLES))]
    rows = []
    for cell, (chosen,) in selection.select_per_cell(candidates.to_dict("records"), cells, primary, prefix).items():
        chosen = pd.Series(chosen)
        expected = len(spec.confirm.seeds) if (confirmed and spec.confirm) else chosen["trials"]
        complete = chosen["trials_finished"] >= expected and (confirmed or spec.confirm is None)
        chosen["row"] = "REST (selected)"
        chosen["status"] = "complete" if complete else (
            f"incomplete: {chosen['trials_finished']} of {expected} seeds finished" if confirmed
            else "incomplete: search phase only")  # fmt: skip
        in_cell = groups[[tuple(r[k] for k in cells) == cell for _, r in groups.iterrows()]]
        baseline_rows = []
        for role, label in BASELINE_ROLES.items():
            base = in_cell[in_cell["role"] == role]
            base = base.iloc[0] if not base.empty else None
            suffix = role.removesuffix("_baseline")
            chosen[f"gain_over_{suffix}"], chosen[f"gain_over_{suffix}_se"] = _gain(
                chosen, base, "best_test_worst_group_acc"
            )
            if base is not None:
                baseline_rows.append(base.to_dict() | {"row": label, "status": "baseline"})
        rows += [chosen.to_dict()] + baseline_rows
    table = _with_failed_cells(
        pd.DataFrame(rows + _failed_cells(rows, trials, spec, cells, "REST (selected)")), trials, spec
    )
    if table.empty:
        return table
    table["selection"] = _ranking_label(spec, ranking)
    table["small_deciding_group"] = table["deciding_group_size"] < selection.SMALL_GROUP
    first = ["row", *cells, *spec.searched_keys(), "seeds", "selection", "status"]
    return table.reindex(columns=first + [c for c in table.columns if c not in first and c != "role"])


def best_per_method(study: StudyResults, ranking: str = "val") -> pd.DataFrame:
    """A methods study: per cell, each method's selected config (mean over confirm seeds),
    in the study's method order."""
    spec = study.spec
    cells = spec.compare_within
    trials = study.trials()
    pool = selection_pool(trials)
    confirmed = (pool["phase"] == "confirm").any()
    primary, prefix = ranked_by(spec, ranking)
    groups = aggregate(pool, cells + ["method"] + spec.method_keys()) if not pool.empty else pd.DataFrame()
    order = {m.name: i for i, m in enumerate(spec.methods)}
    rows = []
    for _, (chosen,) in selection.select_per_cell(
        groups.to_dict("records"), cells + ["method"], primary, prefix
    ).items():
        expected = len(spec.confirm.seeds) if (confirmed and spec.confirm) else chosen["trials"]
        complete = chosen["trials_finished"] >= expected and (confirmed or spec.confirm is None)
        status = (
            "complete"
            if complete
            else (
                f"incomplete: {chosen['trials_finished']} of {expected} seeds finished"
                if confirmed
                else "incomplete: search phase only"
            )
        )
        rows.append({**chosen, "row": chosen["method"], "status": status})
    rows += [r | {"row": r["method"]} for r in _failed_cells(rows, trials, spec, cells + ["method"], "")]
    table = _with_failed_cells(pd.DataFrame(rows), trials, spec)
    if table.empty:
        return table
    table = table.sort_values(
        [*cells, "method"], key=lambda col: col.map(order) if col.name == "method" else col, kind="stable"
    ).reset_index(drop=True)
    table["selection"] = _ranking_label(spec, ranking)
    table["small_deciding_group"] = table["deciding_group_size"] < selection.SMALL_GROUP
    first = ["row", *cells, *spec.searched_keys(), "seeds", "selection", "status"]
    return table.reindex(columns=first + [c for c in table.columns if c not in first and c != "method"])


def _failed_cells(rows: list[dict], trials: pd.DataFrame, spec: StudySpec, keys: list[str], label: str) -> list[dict]:
    """A row for each `keys` group (cell) of the study's trials that has no selected config: none finished an epoch."""
    failures = cell_failures(trials, spec)
    missing = missing_rows(rows, trials.to_dict("records"), keys, row=label, **NO_RESULT)
    for row in missing:
        row["status"] = (
            "failed: no config of this cell finished an epoch"
            if failures_of(failures, row, spec.compare_within)
            else "no results yet: no trial finished an epoch"
        )
    return missing


def _with_failed_cells(table: pd.DataFrame, trials: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    return add_failed_column(table, spec.compare_within, cell_failures(trials, spec))


def _ranking_label(spec: StudySpec, ranking: str) -> str:
    if ranking == "oracle":
        return "ORACLE (test worst-group)"
    return f"validation {spec.train.selection.replace('_', '-')}"


def density_bin(density: float, per_decade: int = BINS_PER_DECADE) -> str:
    """The log-scale bin (lo, hi] of a density: `per_decade` bins per factor of 10, the top one ending at 1."""
    if not density > 0:  # a failed trial's config may hold anything
        return "n/a"
    i = math.ceil(round(math.log10(density) * per_decade, 9))
    return f"({10 ** ((i - 1) / per_decade):.3g}, {10 ** (i / per_decade):.3g}]"


def by_density(study: StudyResults, ranking: str = "val") -> pd.DataFrame:
    """Per cell and density, on the search phase: the best config over the other searched settings.

    Where density is sampled from a range (no two trials share it), densities are
    grouped into log-scale bins (`density_bin`) and each row is the bin's best config.
    """
    spec = study.spec
    groups = search_configs(study)
    trials = study.trials()
    search = trials[trials["phase"] == "search"] if not trials.empty else trials
    keys = spec.compare_within + ["density"]
    if "density" in spec.sampled_keys():
        search = search.assign(density_bin=[density_bin(d) for d in search["density"]])
        if not groups.empty:
            groups.insert(0, "density_bin", [density_bin(d) for d in groups["density"]])
            groups = groups.sort_values("density")
        keys = spec.compare_within + ["density_bin"]
    primary, prefix = ranked_by(spec, ranking)
    chosen = [rows[0] for rows in selection.select_per_cell(groups.to_dict("records"), keys, primary, prefix).values()]
    chosen += missing_rows(chosen, search.to_dict("records"), keys, **NO_RESULT)  # every trial of these failed
    table = _with_failed_cells(pd.DataFrame(chosen), trials, spec)
    return table.sort_values(spec.compare_within + ["density"]).reset_index(drop=True) if not table.empty else table


def paper_table(studies: list[StudyResults], ranking: str = "val") -> pd.DataFrame:
    """REST's table layout: rows ERM, dense reweighted, REST; one column per (dataset, ratio);
    cells unbiased and conflicting test accuracy, mean ± SE over seeds (percent)."""
    rows = []
    for study in studies:
        for _, r in best_configs(study, ranking).iterrows():
            rows.append(
                {
                    "method": r["row"],
                    "density": r["density"],
                    "dataset": r["dataset"],
                    "conflict_pct": r["conflict_pct"],
                    "unbiased": 100 * r["best_test_unbiased_acc"],
                    "unbiased_se": 100 * r["best_test_unbiased_acc_se"],
                    "conflicting": 100 * r["best_test_conflict_acc"],
                    "conflicting_se": 100 * r["best_test_conflict_acc_se"],
                    "seeds": r["seeds"],
                    "status": r["status"],
                    **({"failed": r["failed"]} if "failed" in r else {}),
                }
            )
    return pd.DataFrame(rows)
