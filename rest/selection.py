"""What "best" means: the one selection rule of the project.

Every place that picks something (the trainer's best epoch, ASHA's metric, the
confirm phase's top-k, the summary ``run`` prints, every export table, the plot
and ``export-model``) calls this module; nothing else ranks epochs or configs.

The rule, for epochs and for configs alike (validation numbers only, never test):

1. higher validation primary metric: worst-group accuracy (default; REST's
   reweighted runs) or average accuracy (``selection: average``, REST's sparse runs);
2. then higher validation average accuracy;
3. then lower validation loss;
4. then, for epochs, the later epoch (a model that trained longer at equal
   evidence); for configs, the order of the inputs (stable).

Small validation groups make step 1 coarse (20 conflicting samples: 5-point steps)
and ties frequent, which is why steps 2-3 exist. A small deciding group can also
pick an untrained epoch *without* a tie (1 of 6 conflicting samples right by luck),
so every selection records the size of the group that decided it; tables flag
selections decided by fewer than ``SMALL_GROUP`` samples.

Records are dicts with ``val_*`` keys as the trainer writes them; aggregated
config rows use the same keys (means over seeds). Missing or nan values rank lowest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# The primary metric (TrainSettings.selection, a study's ``selection:``) -> its record key.
PRIMARY_METRIC_KEYS = {"worst_group": "worst_group_acc", "average": "avg_acc"}
# The ranking (export's ``--selection``): configs ranked on validation as the rule says, or,
# labelled ORACLE, on test worst-group accuracy -> the record prefix it ranks on.
RANKING_PREFIXES = {"val": "best_val_", "oracle": "best_test_"}
RANKING_NAMES = tuple(RANKING_PREFIXES)
RANKED = tuple(f"val_{m}" for m in (*PRIMARY_METRIC_KEYS.values(), "loss"))  # the validation keys rank_key reads
SMALL_GROUP = 30  # a deciding validation group below this is flagged in tables


def _num(x: Any) -> float:
    """A sortable number: None and nan rank lowest."""
    if x is None:
        return -math.inf
    x = float(x)
    return -math.inf if x != x else x


def check_primary_metric(primary: str) -> str:
    if primary not in PRIMARY_METRIC_KEYS:
        raise ValueError(f"unknown selection '{primary}'; choose from {', '.join(PRIMARY_METRIC_KEYS)}")
    return primary


def rank_key(record: Mapping[str, Any], primary: str = "worst_group", prefix: str = "val_") -> tuple:
    """Sort key (larger is better) of one epoch record or one aggregated config row.

    ``prefix="best_val_"`` ranks a trial by the epoch it selected.
    """
    loss = _num(record.get(f"{prefix}loss"))
    return (
        _num(record.get(prefix + PRIMARY_METRIC_KEYS[check_primary_metric(primary)])),
        _num(record.get(f"{prefix}avg_acc")),
        -loss if loss != -math.inf else -math.inf,
        _num(record.get("epoch", 0)) if prefix == "val_" else 0.0,
    )


def better(record: Mapping[str, Any], incumbent: Mapping[str, Any] | None, primary: str = "worst_group") -> bool:
    """True if epoch `record` should replace the best epoch so far (ties go to the later epoch)."""
    return incumbent is None or rank_key(record, primary) >= rank_key(incumbent, primary)


def best_epoch(history: Iterable[Mapping[str, Any]], primary: str = "worst_group") -> Mapping[str, Any] | None:
    """The selected epoch record of a trial's history."""
    best = None
    for record in history:
        if better(record, best, primary):
            best = record
    return best


def rank(rows: Sequence[Mapping[str, Any]], primary: str = "worst_group", prefix: str = "val_") -> list[int]:
    """Indices of `rows` from best to worst (stable: equal rows keep their order)."""
    return sorted(range(len(rows)), key=lambda i: rank_key(rows[i], primary, prefix), reverse=True)


def select(
    rows: Sequence[Mapping[str, Any]], primary: str = "worst_group", prefix: str = "val_", k: int = 1
) -> list[int]:
    """Indices of the top-k rows (k=1: the selected one)."""
    return rank(rows, primary, prefix)[:k]


def deciding_group_size(record: Mapping[str, Any], primary: str = "worst_group", prefix: str = "val_") -> float:
    """Validation samples behind the primary metric of `record`.

    Worst-group: the size of the group that is the minimum (conflicting or aligned);
    average: the whole validation split. nan when the counts were not recorded.
    """
    align_n, conflict_n = record.get(f"{prefix}align_count"), record.get(f"{prefix}conflict_count")
    if align_n is None or conflict_n is None:
        return math.nan
    if check_primary_metric(primary) == "average":
        return float(align_n) + float(conflict_n)
    align, conflict = _num(record.get(f"{prefix}align_acc")), _num(record.get(f"{prefix}conflict_acc"))
    if conflict_n == 0:
        return float(align_n)
    return float(conflict_n) if conflict <= align else float(align_n)


def scalar(record: Mapping[str, Any], primary: str = "worst_group") -> float:
    """One number that orders epochs as ``rank_key`` does, for ASHA (which wants a scalar).

    primary + 1e-4 * average + 1e-8 / (1 + loss): exact on steps 1-2 while the
    deciding group has fewer than 10,000 samples (primary steps >= 1e-4 > the
    whole average term); the loss term only orders exact ties of both accuracies.
    """
    p, avg = rank_key(record, primary)[:2]
    loss = record.get("val_loss")
    loss = math.inf if loss is None or loss != loss else float(loss)
    p = 0.0 if p == -math.inf else p
    avg = 0.0 if avg == -math.inf else avg
    return p + 1e-4 * avg + 1e-8 / (1.0 + loss)


def select_per_cell(
    rows: Sequence[Mapping[str, Any]],
    cell_keys: Sequence[str],
    primary: str = "worst_group",
    prefix: str = "best_val_",
    k: int = 1,
) -> dict[tuple, list[Mapping[str, Any]]]:
    """Per cell (the values of `cell_keys`), the top-k rows; rows of different cells never compete."""
    cells: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        cells.setdefault(tuple(row[key] for key in cell_keys), []).append(row)
    return {
        cell: [members[i] for i in select(members, primary, prefix, k)]
        for cell, members in sorted(cells.items(), key=lambda kv: str(kv[0]))
    }
