"""Tables, plots and sparse models from finished (or partial) studies; read-only on storage.

Everything comes from the study reader (``rest.report.results``) and every choice from
the selection rule (``rest.selection``): per cell, configs are ranked on the mean
over seeds of their selected epochs' validation numbers; the tables report those
epochs' test numbers (mean ± standard error over seeds, in percent). With
``selection="oracle"`` configs are ranked on test worst-group accuracy instead,
and every output says ORACLE.

Outputs: best_configs (selected config per cell and both baselines, with REST's
gain over each), by_density, paper_table (the LfF / DisEnt / REST layout),
trials.csv, accuracy_vs_density.png and summary.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from rest import selection
from rest.errors import UserError
from rest.report import export_dir
from rest.report.results import StudyResults, read_study, search_configs
from rest.storage import Location, existing_storage, open_location
from rest.study.failures import FIX, add_failed_column, cell_failures, failures_of, missing_rows
from rest.study.space import StudySpec
from rest.study.trials import aggregate
from rest.tables import float_cell, markdown

log = logging.getLogger(__name__)

# Metrics shown in tables, by their record names (fractions in records, percent in tables).
TABLE_METRICS = [
    "val_worst_group_acc", "test_worst_group_acc", "test_unbiased_acc", "test_conflict_acc", "test_align_acc",
    "test_worst_class_bias_acc", "test_balanced_acc",
]  # fmt: skip
PRIMARY_PREFIX = {"val": "best_val_", "oracle": "best_test_"}
BINS_PER_DECADE = 4  # by_density's log-scale bins for sampled densities
BASELINE_ROLES = {"erm_baseline": "ERM (dense)", "dense_reweighted_baseline": "dense reweighted"}


Writer = Callable[[Path], None]  # writes one output file at the path it is given


# The columns of a row whose configs all failed (so tables keep their shape when every trial failed).
NO_RESULT = {
    "seeds": 0,
    "deciding_group_size": math.nan,
    "nonzero_rel": math.nan,
    "flops_rel": math.nan,
    "stopped_early": 0,
    **{f"best_{m}{se}": math.nan for m in TABLE_METRICS for se in ("", "_se")},
}


class ExportError(UserError):
    pass


def find_study(name_or_path: str, storage: str | None) -> Location:
    """A study's directory from its path or its name under storage; creates nothing."""
    direct = open_location(name_or_path)
    if direct.join("manifest.json").is_file():
        return direct
    candidate = open_location(existing_storage(storage)).join(name_or_path)
    if candidate.join("manifest.json").is_file():
        return candidate
    raise ExportError(
        f"{name_or_path} is not a study directory (no manifest.json there or under --storage); "
        f"pass the study's path or its name with --storage"
    )


def load_study(location: Location) -> StudyResults:
    study = read_study(location)
    trials = study.trials()
    if trials.empty:
        raise ExportError(f"study {study.name} has no trials yet; run or resume it first")
    if not ((trials["epochs_run"] > 0) | (trials["status"] == "ERROR")).any():
        raise ExportError(f"study {study.name} has no trial with a finished epoch yet; resume it first")
    return study


# ------------------------------------------------------------------- tables


def _primary(spec: StudySpec, how: str) -> tuple[str, str]:
    """(primary metric, record prefix) of a selection mode: validation as the study says, or oracle."""
    if how == "oracle":
        return "worst_group", PRIMARY_PREFIX["oracle"]
    return getattr(spec.train, "selection", "worst_group"), PRIMARY_PREFIX["val"]


def _pool(trials: pd.DataFrame) -> pd.DataFrame:
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


def best_configs(study: StudyResults, how: str = "val") -> pd.DataFrame:
    """Per cell: the selected config (mean over confirm seeds), both baselines, and REST's gain over each.

    A methods study has one row per cell and method instead (``best_per_method``).
    """
    spec = study.spec
    if spec.methods:
        return best_per_method(study, how)
    cells = spec.compare_within
    trials = study.trials()
    pool = _pool(trials)
    confirmed = (pool["phase"] == "confirm").any()
    groups = (
        aggregate(pool, cells + spec.searched_keys() + ["role"]) if not pool.empty else pd.DataFrame(columns=["role"])
    )
    primary, prefix = _primary(spec, how)
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
    table["selection"] = _selection_label(spec, how)
    table["small_deciding_group"] = table["deciding_group_size"] < selection.SMALL_GROUP
    first = ["row", *cells, *spec.searched_keys(), "seeds", "selection", "status"]
    return table.reindex(columns=first + [c for c in table.columns if c not in first and c != "role"])


def best_per_method(study: StudyResults, how: str = "val") -> pd.DataFrame:
    """A methods study: per cell, each method's selected config (mean over confirm seeds), in the study's method order."""
    spec = study.spec
    cells = spec.compare_within
    trials = study.trials()
    pool = _pool(trials)
    confirmed = (pool["phase"] == "confirm").any()
    primary, prefix = _primary(spec, how)
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
    table["selection"] = _selection_label(spec, how)
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


def _selection_label(spec: StudySpec, how: str) -> str:
    if how == "oracle":
        return "ORACLE (test worst-group)"
    return f"validation {getattr(spec.train, 'selection', 'worst_group').replace('_', '-')}"


def density_bin(density: float, per_decade: int = BINS_PER_DECADE) -> str:
    """The log-scale bin (lo, hi] of a density: `per_decade` bins per factor of 10, the top one ending at 1."""
    if not density > 0:  # a failed trial's config may hold anything
        return "n/a"
    i = math.ceil(round(math.log10(density) * per_decade, 9))
    return f"({10 ** ((i - 1) / per_decade):.3g}, {10 ** (i / per_decade):.3g}]"


def by_density(study: StudyResults, how: str = "val") -> pd.DataFrame:
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
    primary, prefix = _primary(spec, how)
    chosen = [rows[0] for rows in selection.select_per_cell(groups.to_dict("records"), keys, primary, prefix).values()]
    chosen += missing_rows(chosen, search.to_dict("records"), keys, **NO_RESULT)  # every trial of these failed
    table = _with_failed_cells(pd.DataFrame(chosen), trials, spec)
    return table.sort_values(spec.compare_within + ["density"]).reset_index(drop=True) if not table.empty else table


def paper_table(studies: list[StudyResults], how: str = "val") -> pd.DataFrame:
    """REST's table layout: rows ERM, dense reweighted, REST; one column per (dataset, ratio);
    cells unbiased and conflicting test accuracy, mean ± SE over seeds (percent)."""
    rows = []
    for study in studies:
        for _, r in best_configs(study, how).iterrows():
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


# ------------------------------------------------------------------ writing


def _fmt(mean: float, se: float) -> str:
    if mean != mean:
        return "n/a"
    return f"{mean:.1f}" if se != se else f"{mean:.1f} ± {se:.1f}"


format_value = float_cell(".4g", nan="n/a")  # floats as 0.05 or 0.5831 (sampled values: 4 significant digits)


def presentable(table: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    """Accuracy columns as 'mean ± se' percent strings, for md and tex."""
    if table.empty:
        return table
    out = pd.DataFrame()
    for col in ("study", "row"):
        if col in table:
            out[col] = table[col].values
    for key in spec.compare_within + ["density_bin"] + spec.searched_keys():
        if key in table:
            out[key] = [format_value(v) for v in table[key]]
    for col in ("selection", "seeds"):
        if col in table:
            out[col] = table[col].values
    for metric in TABLE_METRICS:
        if f"best_{metric}" in table:
            out[f"{metric} (%)"] = [
                _fmt(100 * m, 100 * s) for m, s in zip(table[f"best_{metric}"], table[f"best_{metric}_se"])
            ]
    out["nonzero params (rel.)"] = [format(x, ".3f") if x == x else "n/a" for x in table["nonzero_rel"]]
    out["FLOPs (rel.)"] = [format(x, ".3f") if x == x else "n/a" for x in table["flops_rel"]]
    for suffix in ("erm", "dense_reweighted"):
        if f"gain_over_{suffix}" in table:
            out[f"gain over {suffix.replace('_', ' ')} (points)"] = [
                "" if g != g else (f"{100 * g:+.1f}" if s != s else f"{100 * g:+.1f} ± {100 * s:.1f}")
                for g, s in zip(table[f"gain_over_{suffix}"], table[f"gain_over_{suffix}_se"])
            ]
    if "deciding_group_size" in table:
        out["deciding val group (n)"] = [
            ("n/a" if n != n else f"{n:.0f}" + (" (small)" if n < selection.SMALL_GROUP else ""))
            for n in table["deciding_group_size"]
        ]
    for col in ("epochs_run", "stopped_early", "status", "failed"):
        if col in table:
            out[col] = table[col].values
    return out


def paper_presentable(table: pd.DataFrame) -> pd.DataFrame:
    """Rows: methods; columns: '<dataset> <pct>%' with 'unbiased / conflicting' cells."""
    if table.empty:
        return table
    table = table.assign(column=[f"{d} {p:g}%" for d, p in zip(table["dataset"], table["conflict_pct"])])
    columns = list(dict.fromkeys(table["column"]))
    known = ["ERM (dense)", "dense reweighted", "REST (selected)"]
    order = [m for m in known if m in set(table["method"])] + [
        m for m in dict.fromkeys(table["method"]) if m not in known
    ]
    out = []
    for method in order:
        sub = table[table["method"] == method]
        if sub.empty:
            continue
        row = {"method": method if method != "REST (selected)" else "REST (selected density)"}
        for col in columns:
            cell = sub[sub["column"] == col]
            if cell.empty:
                row[f"{col} unbiased (%)"] = row[f"{col} conflicting (%)"] = "n/a"
                continue
            c = cell.iloc[0]
            row[f"{col} unbiased (%)"] = _fmt(c["unbiased"], c["unbiased_se"])
            row[f"{col} conflicting (%)"] = _fmt(c["conflicting"], c["conflicting_se"])
        out.append(row)
        if method == "REST (selected)":  # the density REST selected differs per column: say which
            out.append(
                {
                    "method": "REST: selected density",
                    **{
                        f"{col} {part} (%)": (
                            format_value(sub[sub["column"] == col].iloc[0]["density"]) if part == "unbiased" else ""
                        )
                        if not sub[sub["column"] == col].empty
                        else ""
                        for col in columns
                        for part in ("unbiased", "conflicting")
                    },
                }
            )
    if "failed" in table and table["failed"].fillna("").astype(bool).any():  # per column: its cell's failed configs
        failed = table.drop_duplicates("column").set_index("column")["failed"].fillna("")
        out.append(
            {
                "method": "failed configs",
                **{
                    f"{col} {part} (%)": failed[col] if part == "unbiased" else ""
                    for col in columns
                    for part in ("unbiased", "conflicting")
                },
            }
        )
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table, written by the project's one table printer."""
    return markdown(table, cell=format_value) + "\n"


def to_latex(table: pd.DataFrame, caption: str) -> str:
    """booktabs table: text columns left, numbers right, ± as \\pm, with a caption."""
    numeric = [bool(len(table)) and all(_looks_numeric(v) for v in table[c]) for c in table.columns]
    spec = "".join("r" if n else "l" for n in numeric)
    esc = _latex_escape
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{esc(caption)}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(esc(str(c)) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    for row in table.itertuples(index=False):
        lines.append(" & ".join(_latex_value(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def _looks_numeric(v) -> bool:
    text = (
        format_value(v)
        .replace("±", "")
        .replace("+", "")
        .replace("-", "")
        .replace(".", "")
        .replace(" ", "")
        .replace(",", "")
    )
    return text.isdigit() or text in ("n/a", "")


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$")):
        text = text.replace(a, b)
    return text.replace("±", r"$\pm$")


def _latex_value(v) -> str:
    text = format_value(v)
    if "±" in text:
        mean, se = (s.strip() for s in text.split("±"))
        return f"${mean} \\pm {se}$"
    return _latex_escape(text)


def caption(spec: StudySpec, how: str, what: str) -> str:
    rule = (
        "ORACLE: configs ranked on test worst-group accuracy (not a fair result)"
        if how == "oracle"
        else f"configs ranked per cell on validation {getattr(spec.train, 'selection', 'worst_group').replace('_', '-')} "
        f"accuracy, then validation average accuracy, then validation loss"
    )
    return f"{what}. {rule[0].upper()}{rule[1:]}; test accuracy of each run's selected epoch, mean ± standard error over seeds, in percent."


def table_files(
    table: pd.DataFrame, shown: pd.DataFrame, base: str, formats: list[str], title: str
) -> dict[str, Writer]:
    """csv holds the raw columns (fractions); md and tex the presentable ones (percent) with a caption."""
    writers: dict[str, Writer] = {
        "csv": lambda path: table.to_csv(path, index=False),
        "md": lambda path: path.write_text(f"{title}\n\n{to_markdown(shown)}"),
        "tex": lambda path: path.write_text(to_latex(shown, title)),
    }
    return {f"{base}.{fmt}": writers[fmt] for fmt in formats}


FORMATS = ("md", "csv", "tex")


def export(studies: list[StudyResults], out: Path, formats: list[str], how: str = "val") -> list[Path]:
    """Write every table, the plot and the summary of one study (or the merged tables of several).

    `out` then holds this export alone (``rest.report.export_dir``): the files of an earlier
    export of the same studies that this one does not write are removed.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown format {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    files = export_files(studies, formats, how)
    owner = ", ".join(s.name for s in studies)
    out, earlier = export_dir.claim(out, owner, list(files))
    for name, write in files.items():
        write(out / name)
    export_dir.settle(out, owner, list(files), earlier)
    return [out / name for name in files]


def export_files(studies: list[StudyResults], formats: list[str], how: str) -> dict[str, Writer]:
    """Every output of an export, file name -> the function that writes it there."""
    suffix = "" if how == "val" else "_oracle"
    spec = studies[0].spec
    best = pd.concat([best_configs(s, how).assign(study=s.name) for s in studies], ignore_index=True)
    if len(studies) == 1:
        best = best.drop(columns=["study"])
    files = table_files(
        best,
        presentable(best, spec),
        f"best_configs{suffix}",
        formats,
        caption(
            spec,
            how,
            "Selected config per cell and method"
            if spec.methods
            else "Selected config per cell and the dense baselines",
        ),
    )
    paper = paper_table(studies, how)
    files |= table_files(
        paper,
        paper_presentable(paper),
        f"paper_table{suffix}",
        formats,
        caption(spec, how, "Unbiased / conflicting test accuracy per conflict ratio"),
    )
    trials = pd.concat(
        [
            add_failed_column(
                s.trials(), s.spec.compare_within, cell_failures(s.trials(), s.spec), "cell_failed"
            ).assign(study=s.name)
            for s in studies
        ],
        ignore_index=True,
    )
    files["trials.csv"] = lambda path: trials.to_csv(path, index=False)
    if len(studies) == 1 and not spec.methods:  # methods differ in more than density: no by-density view
        study = studies[0]
        density = by_density(study, how)
        files |= table_files(
            density,
            presentable(density, spec),
            f"by_density{suffix}",
            [f for f in formats if f in ("csv", "md")],
            caption(spec, how, "Search phase: best config per cell and density"),
        )
        if density["best_test_worst_group_acc"].notna().any():  # no plot when every trial failed
            from rest.report.plots import accuracy_vs_density

            files[f"accuracy_vs_density{suffix}.png"] = lambda path: accuracy_vs_density(
                study, density, best, path, how
            )
    if len(studies) == 1:
        files["summary.md"] = lambda path: path.write_text(summary(studies[0], best, how))
    return files


def summary(study: StudyResults, best: pd.DataFrame, how: str) -> str:
    t, m, spec = study.trials(), study.manifest, study.spec
    lines = [f"# Study {study.name}", ""]
    if spec.description:
        lines += [spec.description, ""]
    if how == "oracle":
        lines += ["**ORACLE selection: configs chosen on test worst-group accuracy (not a fair result).**", ""]
    lines += ["## What ran", ""]
    for phase, info in m["phases"].items():
        sub = t[t["phase"] == phase] if not t.empty else t
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sub["status"].value_counts().items()) or "none"
        lines.append(
            f"- {phase}: {info['status']}, {len(sub)} trials ({counts}), "
            f"wall time {info.get('wall_seconds', 0) / 60:.1f} min"
        )
    search = t[t["phase"] == "search"]
    full = m.get("grid_trials", len(search)) * spec.max_epochs
    spent = int(search["epochs_run"].sum())
    lines += [
        f"- search trial-epochs: {spent} of {full} had every trial run every epoch ({spent / max(1, full):.0%}); "
        f"{int(search['stopped_early'].sum())} trials stopped early by ASHA",
        f"- confirm trial-epochs: {int(t[t['phase'] == 'confirm']['epochs_run'].sum())}",
        f"- failed trials: {int((t['status'] == 'ERROR').sum())}; trials retried after a worker failure: "
        f"{int(((t['retries'] > 0) & (t['status'] != 'ERROR')).sum())}",
        f"- trial training time: {t['train_seconds'].sum() / 60:.1f} min",
        "",
    ]
    lines += _failed_section(study)
    stalls = study.location.join("stalls.log")
    if stalls.exists():
        lines += ["## Waits for resources", "", *[f"- {line}" for line in stalls.read_text().splitlines()], ""]
    small = best[best.get("small_deciding_group", pd.Series(False, index=best.index)).fillna(False).astype(bool)]
    lines += [
        "## How configs were chosen",
        "",
        caption(spec, how, "Every cell's config was chosen on validation data alone"),
        "",
    ]
    if not small.empty:
        lines += [
            f"**Caution:** {len(small)} row(s) were decided by a validation group of fewer than "
            f"{selection.SMALL_GROUP} samples (column 'deciding val group'); their selection is noisy.",
            "",
        ]
    lines += [
        "## Reproduce",
        "",
        "```",
        m.get("command", ""),
        "```",
        "",
        "## Best config per cell",
        "",
        to_markdown(presentable(best, spec)),
    ]
    return "\n".join(lines)


def _failed_section(study: StudyResults) -> list[str]:
    """Summary lines naming each cell's failed configs and each failed trial's error, with the fix."""
    t, spec = study.trials(), study.spec
    failures = cell_failures(t, spec)
    if not failures:
        return []
    lines = [
        "## Failed trials",
        "",
        "**The results are incomplete:** trials below ended in an error after their retries.",
        "",
    ]
    for cell, text in failures.items():
        lines.append(f"- cell {', '.join(v if v[:1].isalpha() else format_value(float(v)) for v in cell)}: {text}")
    for _, row in t[t["status"] == "ERROR"].iterrows():
        lines.append(f"- trial {row['trial_id']} ({row['phase']}): {row['error']}")
    options = study.manifest.get("options", {})
    return lines + ["", FIX.format(name=study.name, storage=options.get("storage", "<storage>")), ""]
