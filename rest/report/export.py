"""Writing a study's report: every table as markdown, csv and LaTeX, the plot and summary.md; read-only on storage.

The tables themselves (DataFrames) are ``rest.report.tables``'; this module presents them
(accuracy in percent, mean ± standard error over seeds), captions them with the ranking that
chose their configs (``val``: the selection rule on validation numbers; ``oracle``: test
worst-group accuracy, and every output says ORACLE), and writes one export directory
(``rest.report.export_dir``).

Outputs: best_configs, by_density, paper_table (each .md / .csv / .tex), trials.csv,
accuracy_vs_density.png and summary.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from rest import selection
from rest.errors import UserError
from rest.report import export_dir
from rest.report.results import StudyResults, read_study
from rest.report.tables import TABLE_METRICS, best_configs, by_density, paper_table
from rest.storage import Location
from rest.study.failures import FIX, add_failed_column, cell_failures
from rest.study.space import StudySpec
from rest.tables import float_cell, markdown

log = logging.getLogger(__name__)

Writer = Callable[[Path], object]  # writes one output file at the path it is given (its result is ignored)


class ExportError(UserError):
    pass


def read_for_export(location: Location) -> StudyResults:
    """Read a study (``read_study``), refusing one with nothing to report yet: no trial,
    or none that finished an epoch or failed."""
    study = read_study(location)
    trials = study.trials()
    if trials.empty:
        raise ExportError(f"study {study.name} has no trials yet; run or resume it first")
    if not ((trials["epochs_run"] > 0) | (trials["status"] == "ERROR")).any():
        raise ExportError(f"study {study.name} has no trial with a finished epoch yet; resume it first")
    return study


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


def caption(spec: StudySpec, ranking: str, what: str) -> str:
    if ranking == "oracle":
        rule = "ORACLE: configs ranked on test worst-group accuracy (not a fair result)"
    else:
        primary = spec.train.selection.replace("_", "-")
        rule = (
            f"configs ranked per cell on validation {primary} accuracy, then validation average accuracy, "
            f"then validation loss"
        )
    return (
        f"{what}. {rule[0].upper()}{rule[1:]}; test accuracy of each run's selected epoch, "
        f"mean ± standard error over seeds, in percent."
    )


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


FORMAT_NAMES = ("md", "csv", "tex")


def export(studies: list[StudyResults], out: Path, formats: list[str], ranking: str = "val") -> list[Path]:
    """Write every table, the plot and the summary of one study (or the merged tables of several).

    `out` then holds this export alone (``rest.report.export_dir``): the files of an earlier
    export of the same studies that this one does not write are removed.
    """
    unknown = [f for f in formats if f not in FORMAT_NAMES]
    if unknown:
        raise ExportError(f"unknown format {', '.join(unknown)}; choose from {', '.join(FORMAT_NAMES)}")
    files = export_files(studies, formats, ranking)
    owner = ", ".join(s.name for s in studies)
    out, earlier = export_dir.claim(out, owner, list(files))
    for name, write in files.items():
        write(out / name)
    export_dir.settle(out, owner, list(files), earlier)
    return [out / name for name in files]


def export_files(studies: list[StudyResults], formats: list[str], ranking: str) -> dict[str, Writer]:
    """Every output of an export, file name -> the function that writes it there."""
    suffix = "" if ranking == "val" else "_oracle"
    spec = studies[0].spec
    best = pd.concat([best_configs(s, ranking).assign(study=s.name) for s in studies], ignore_index=True)
    if len(studies) == 1:
        best = best.drop(columns=["study"])
    files = table_files(
        best,
        presentable(best, spec),
        f"best_configs{suffix}",
        formats,
        caption(
            spec,
            ranking,
            "Selected config per cell and method"
            if spec.methods
            else "Selected config per cell and the dense baselines",
        ),
    )
    paper = paper_table(studies, ranking)
    files |= table_files(
        paper,
        paper_presentable(paper),
        f"paper_table{suffix}",
        formats,
        caption(spec, ranking, "Unbiased / conflicting test accuracy per conflict ratio"),
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
        density = by_density(study, ranking)
        files |= table_files(
            density,
            presentable(density, spec),
            f"by_density{suffix}",
            [f for f in formats if f in ("csv", "md")],
            caption(spec, ranking, "Search phase: best config per cell and density"),
        )
        if density["best_test_worst_group_acc"].notna().any():  # no plot when every trial failed
            from rest.report.plots import accuracy_vs_density

            files[f"accuracy_vs_density{suffix}.png"] = lambda path: accuracy_vs_density(
                study, density, best, path, ranking
            )
    if len(studies) == 1:
        files["summary.md"] = lambda path: path.write_text(summary(studies[0], best, ranking))
    return files


def summary(study: StudyResults, best: pd.DataFrame, ranking: str) -> str:
    t, m, spec = study.trials(), study.manifest, study.spec
    lines = [f"# Study {study.name}", ""]
    if spec.description:
        lines += [spec.description, ""]
    if ranking == "oracle":
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
        caption(spec, ranking, "Every cell's config was chosen on validation data alone"),
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
