"""Trials that failed: how many configs of each cell, and the message that names them.

A config failed when one of its trials ended in ERROR after its retries (Ray's
``max_failures``). A phase with such a trial is ``failed``, never done (rest.study.runner);
the tables say "n of N configs failed" per cell and keep a row for a cell or a
density whose every config failed (rest.report.export). Read-only: the trials come from
the study reader.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from rest.study.space import StudySpec

FIX = "fix the cause, then: tune_search.py resume {name} --storage {storage}"
SHOWN = 10  # failed trials named in a message; trials.csv of an export lists them all


def config_keys(spec: StudySpec) -> list[str]:
    """What tells two configs of a cell apart: the searched keys (a methods study: the method and its keys)
    and the role."""
    keys = spec.searched_keys() + (["method"] if spec.methods else []) + ["role"]
    return [k for k in dict.fromkeys(keys) if k not in spec.compare_within]


def cell_failures(trials, spec: StudySpec) -> dict[tuple, str]:
    """Cell -> 'search: 2 of 4 configs failed; confirm: ...' for every cell with a failed trial.

    `trials` is a study's trials() frame (one row per trial, every phase).
    """
    if trials.empty or not (trials["status"] == "ERROR").any():
        return {}
    cells, keys = spec.compare_within, config_keys(spec)
    texts: dict[tuple, list[str]] = {}
    for phase, in_phase in trials.groupby("phase", sort=False):
        keyed = in_phase.assign(_failed=in_phase["status"] == "ERROR")
        for cell, members in keyed.groupby(cells, dropna=False, sort=True):
            configs = members.groupby([k for k in keys if k in members], dropna=False)["_failed"].any()
            if configs.any():
                cell = tuple(_same(v) for v in (cell if isinstance(cell, tuple) else (cell,)))
                texts.setdefault(cell, []).append(f"{phase}: {int(configs.sum())} of {len(configs)} configs failed")
    return {cell: "; ".join(parts) for cell, parts in texts.items()}


def add_failed_column(table, cells: list[str], failures: dict[tuple, str], column: str = "failed"):
    """`table` with a column saying, per row, its cell's failures; unchanged when nothing failed
    (so the tables of a complete study keep their columns)."""
    if not failures or table.empty:
        return table
    return table.assign(**{column: [failures_of(failures, row, cells) for _, row in table.iterrows()]})


def missing_rows(present: Iterable[Mapping], candidates: Iterable[Mapping], keys: list[str], **fill) -> list[dict]:
    """A row (`fill` over the group's `keys`) for each `keys` group of `candidates` (every trial) that
    `present` lacks."""
    have = {tuple(_same(row.get(k)) for k in keys) for row in present}
    rows = {}
    for c in candidates:
        group = tuple(_same(c.get(k)) for k in keys)
        if group not in have and group not in rows:
            rows[group] = {**fill, **{k: c.get(k) for k in keys}}
    return list(rows.values())


def _cell(row, cells: list[str]) -> tuple:
    return tuple(_same(row[k]) for k in cells)


def failures_of(failures: dict[tuple, str], row, cells: list[str]) -> str:
    """The failures of the cell `row` belongs to ('' if none)."""
    return failures.get(_cell(row, cells), "")


def _same(value) -> str:
    """One text per value whatever pandas made of it (5 and 5.0 alike, nan alike)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "nan" if math.isnan(number) else repr(number)


def describe(config: dict, keys: Iterable[str]) -> str:
    """'conflict_pct 2, density 0.5' for the keys a config has."""
    return ", ".join(
        f"{k} {config[k]:g}" if isinstance(config[k], float) else f"{k} {config[k]}" for k in keys if k in config
    )


def failed_message(name: str, storage: str, spec: StudySpec, phase: str, trials: list) -> str:
    """Which trials of `phase` failed, the first line of each one's error, and the fix.

    `trials` are rest.study.trials.Trial objects of the phase (failed or not).
    """
    failed = [t for t in trials if t.status == "ERROR"]
    keys = spec.compare_within + spec.searched_keys()
    lines = [
        f"study {name}: {len(failed)} of {len(trials)} trials of the {phase} phase failed after their retries, "
        f"so the phase is failed and its results incomplete:"
    ]
    for t in failed[:SHOWN]:
        what = describe(t.config, keys) + (f", method {t.method}" if t.method else "")
        lines.append(f"  trial {t.trial_id} ({what}): {t.error()}")
    if len(failed) > SHOWN:
        lines.append(f"  and {len(failed) - SHOWN} more (an export's trials.csv lists every error)")
    lines.append(FIX.format(name=name, storage=storage))
    return "\n".join(lines)
