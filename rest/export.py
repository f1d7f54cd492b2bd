"""Tables, plots and sparse models from a study directory (no cluster needed).

Everything is computed from the per-epoch records each trial wrote (Ray's
``result.json``; a record repeated after a resume is counted once, the last one
wins) and the trial statuses in Ray's experiment state. Selection is by
validation worst-group accuracy; ``selection="oracle"`` picks by test worst-group
accuracy instead and every output says so.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .space import StudySpec, parse_space

log = logging.getLogger(__name__)

ACC = ["val_worst_group_acc", "test_worst_group_acc", "test_unbiased_acc", "test_conflict_acc", "test_align_acc"]
SHORT = {"val_worst_group_acc": "val_wg", "test_worst_group_acc": "test_wg", "test_unbiased_acc": "test_unbiased",
         "test_conflict_acc": "test_conflict", "test_align_acc": "test_align"}
SELECTION_METRIC = {"val": "val_worst_group_acc", "oracle": "test_worst_group_acc"}
MARKER = ".rest-export.json"


class ExportError(UserError):
    pass


@dataclass
class Study:
    path: Path
    spec: StudySpec
    manifest: dict
    trials: pd.DataFrame  # one row per trial of every phase

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.path.name)


def find_study(name_or_path: str, storage: str | None) -> Path:
    direct = Path(name_or_path).expanduser()
    if (direct / "manifest.json").is_file():
        return direct.resolve()
    from .study import resolve_storage

    candidate = Path(resolve_storage(storage)) / name_or_path
    if (candidate / "manifest.json").is_file():
        return candidate
    raise ExportError(f"{name_or_path} is not a study directory (no manifest.json there or under --storage); "
                      f"pass the study's path or its name with --storage")


def _records(trial_dir: Path) -> list[dict]:
    file = trial_dir / "result.json"
    if not file.exists():
        return []
    by_epoch: dict[int, dict] = {}
    for line in file.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def _statuses(experiment: Path) -> dict[str, tuple[str, dict, int]]:
    """trial_id -> (status, config, failures) from Ray's experiment state, newest snapshot."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    data = json.loads(states[-1].read_text())
    out = {}
    for entry in data.get("trial_data", []):
        meta = json.loads(entry[1]) if isinstance(entry, list) else {}
        trial = json.loads(entry[0]) if isinstance(entry, list) else entry
        tid = trial.get("trial_id")
        if tid:
            out[tid] = (trial.get("status", "UNKNOWN"), trial.get("config", {}), int(meta.get("num_failures", 0)))
    return out


def load_study(path: Path) -> Study:
    spec = parse_space((path / "study.yaml").read_text(), str(path / "study.yaml"))
    manifest = json.loads((path / "manifest.json").read_text())
    rows = []
    for phase in ("search", "confirm"):
        experiment = path / phase
        if not experiment.is_dir():
            continue
        statuses = _statuses(experiment)
        dirs = {d.name.removeprefix("trial_"): d for d in experiment.glob("trial_*")}
        for tid in sorted(set(statuses) | set(dirs)):
            records = _records(dirs[tid]) if tid in dirs else []
            status, config, failures = statuses.get(tid, ("UNKNOWN", {}, 0))
            config = records[-1]["config"] if records else config
            config = config.get("cfg", config)
            rows.append(_trial_row(phase, tid, status, config, records, spec, failures))
    if not rows:
        raise ExportError(f"study {path.name} has no trials yet; run or resume it first")
    trials = pd.DataFrame(rows)
    if not (trials["epochs_run"] > 0).any():
        raise ExportError(f"study {path.name} has no trial with a finished epoch yet; resume it first")
    return Study(path, spec, manifest, trials)


def _trial_row(phase: str, tid: str, status: str, config: dict, records: list[dict], spec: StudySpec, failures: int) -> dict:
    last = records[-1] if records else {}
    planned = int(config.get("epochs", spec.train.epochs)) if config else spec.train.epochs
    row = {"phase": phase, "trial_id": tid, "status": status,
           "role": (config.get("extra") or {}).get("role", "search") if config else "search",
           "epochs_run": int(last.get("epoch", 0)), "epochs_planned": planned,
           "stopped_early": bool(records) and status == "TERMINATED" and int(last.get("epoch", 0)) < planned,
           "retries": failures}
    for key in ("dataset", "conflict_pct", "density", "lambda_upweight", "reweight", "sparse", "seed", *spec.search):
        row[key] = config.get(key) if config else None
    for metric in ACC:
        row[f"final_{metric}"] = last.get(metric, math.nan)
        row[f"best_{metric}"] = last.get(f"best_{metric}", math.nan)
    for key in ("best_epoch", "nonzero_params", "dense_params", "inference_flops", "dense_inference_flops"):
        row[key] = last.get(key, math.nan)
    row["train_seconds"] = sum(r.get("epoch_seconds", 0.0) for r in records)
    return row


# ------------------------------------------------------------------- tables

def _searched(spec: StudySpec) -> list[str]:
    return [k for k in spec.search if k not in ("seed", *spec.compare_within)]


def _mean_se(values: pd.Series) -> tuple[float, float]:
    v = values.dropna().astype(float)
    if v.empty:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan


def _group_rows(study: Study, trials: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per config (keys) with mean and s.e. over its seeds."""
    rows = []
    for values, group in trials.groupby(keys, dropna=False, sort=True):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        row["seeds"] = int(group["seed"].nunique())
        row["trials_finished"] = int(((group["status"] == "TERMINATED") & ~group["stopped_early"]).sum())
        row["trials"] = len(group)
        for metric in ACC:
            mean, se = _mean_se(group[f"best_{metric}"])
            row[f"{SHORT[metric]}_mean"], row[f"{SHORT[metric]}_se"] = 100 * mean, 100 * se
        row["nonzero_rel"] = float((group["nonzero_params"] / group["dense_params"]).mean())
        row["flops_rel"] = float((group["inference_flops"] / group["dense_inference_flops"]).mean())
        row["epochs_run"] = ",".join(str(e) for e in group["epochs_run"])
        row["stopped_early"] = int(group["stopped_early"].sum())
        rows.append(row)
    return pd.DataFrame(rows)


def best_configs(study: Study, selection: str = "val") -> pd.DataFrame:
    """Per cell: the selected config (mean over confirm seeds) and the ERM baseline's gain over it."""
    spec, t = study.spec, study.trials
    cells = spec.compare_within
    keys = cells + _searched(spec) + ["role"]
    confirm = t[(t["phase"] == "confirm") & (t["epochs_run"] > 0)]
    pool = confirm if not confirm.empty else t[(t["phase"] == "search") & (t["epochs_run"] > 0)]
    groups = _group_rows(study, pool, keys)
    metric = f"{SHORT[SELECTION_METRIC[selection]]}_mean"
    rows = []
    for cell, members in groups.groupby(cells, sort=True):
        candidates = members[members["role"] != "erm_baseline"]
        if candidates.empty:
            continue
        chosen = candidates.sort_values(metric, ascending=False, na_position="last").iloc[0].to_dict()
        expected = len(spec.confirm.seeds) if (not confirm.empty and spec.confirm) else chosen["trials"]
        complete = chosen["trials_finished"] >= expected and (not confirm.empty or spec.confirm is None)
        chosen["status"] = "complete" if complete else (
            f"incomplete: {chosen['trials_finished']} of {expected} seeds finished" if not confirm.empty
            else "incomplete: search phase only")
        chosen["selection"] = "validation" if selection == "val" else "ORACLE (test)"
        baseline = members[members["role"] == "erm_baseline"]
        chosen["erm_test_wg_mean"] = float(baseline["test_wg_mean"].iloc[0]) if not baseline.empty else math.nan
        chosen["gain_over_erm"] = chosen["test_wg_mean"] - chosen["erm_test_wg_mean"]
        rows.append(chosen)
    table = pd.DataFrame(rows)
    baselines = groups[groups["role"] == "erm_baseline"].assign(status="baseline", selection="ERM baseline")
    return pd.concat([table, baselines], ignore_index=True).drop(columns=["role"], errors="ignore") if not table.empty else table


def by_density(study: Study, selection: str = "val") -> pd.DataFrame:
    """Per cell and density: the best lambda (searched keys) on the search phase, with epochs really run."""
    spec, t = study.spec, study.trials
    search = t[(t["phase"] == "search") & (t["epochs_run"] > 0)]
    others = [k for k in _searched(spec) if k != "density"]
    groups = _group_rows(study, search, spec.compare_within + ["density"] + others)
    metric = f"{SHORT[SELECTION_METRIC[selection]]}_mean"
    rows = []
    for _, members in groups.groupby(spec.compare_within + ["density"], sort=True):
        rows.append(members.sort_values(metric, ascending=False, na_position="last").iloc[0])
    return pd.DataFrame(rows).reset_index(drop=True)


# ------------------------------------------------------------------ writing

def _fmt(mean: float, se: float) -> str:
    if mean != mean:
        return "n/a"
    return f"{mean:.1f}" if se != se else f"{mean:.1f} ± {se:.1f}"


def presentable(table: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    """Accuracy columns as 'mean ± se' strings, for md and tex."""
    if table.empty:
        return table
    out = pd.DataFrame()
    for key in spec.compare_within + _searched(spec):
        if key in table:
            out[key] = [_cell(v) for v in table[key]]
    for col in ("selection", "seeds"):
        if col in table:
            out[col] = table[col]
    for short in SHORT.values():
        if f"{short}_mean" in table:
            out[f"{short} %"] = [_fmt(m, s) for m, s in zip(table[f"{short}_mean"], table[f"{short}_se"])]
    out["nonzero"] = [f"{x:.3f}" for x in table["nonzero_rel"]]
    out["FLOPs"] = [f"{x:.3f}" for x in table["flops_rel"]]
    if "gain_over_erm" in table:
        out["gain_over_erm"] = ["" if x != x else f"{x:+.1f}" for x in table["gain_over_erm"]]
    for col in ("epochs_run", "stopped_early", "status"):
        if col in table:
            out[col] = table[col].values
    return out


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (written here to avoid the optional `tabulate` dependency)."""
    if table.empty:
        return "_no rows_\n"
    cells = [[str(c) for c in table.columns]] + [[_cell(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in cells[0]) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:g}"
    return str(v)


WRITERS = {
    "csv": lambda df, path, spec: df.to_csv(path, index=False),
    "md": lambda df, path, spec: path.write_text(to_markdown(presentable(df, spec))),
    "tex": lambda df, path, spec: path.write_text(presentable(df, spec).to_latex(index=False, escape=True)),
}


def prepare_out(out: Path, study_name: str) -> Path:
    """Create the output directory; refuse one holding another study's export or other files.

    Re-exporting a study of the same name (a rerun of `make study`, say) replaces its files.
    """
    out = out.expanduser().resolve()
    marker = out / MARKER
    if out.exists() and any(out.iterdir()):
        owner = json.loads(marker.read_text()).get("study") if marker.exists() else None
        if owner != study_name:
            raise ExportError(f"output directory {out} already holds {'the export of study ' + owner if owner else 'other files'}; "
                              f"choose another --out (nothing was overwritten)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"study": study_name}))
    except OSError as exc:
        raise ExportError(f"cannot write to {out} ({exc.strerror}); choose a writable --out") from None
    return out


def export(study: Study, out: Path, formats: list[str], selection: str = "val") -> list[Path]:
    unknown = [f for f in formats if f not in WRITERS]
    if unknown:
        raise ExportError(f"unknown format {', '.join(unknown)}; choose from {', '.join(WRITERS)}")
    out = prepare_out(out, study.name)
    suffix = "" if selection == "val" else "_oracle"
    written = []
    best = best_configs(study, selection)
    for fmt in formats:
        written.append(out / f"best_configs{suffix}.{fmt}")
        WRITERS[fmt](best, written[-1], study.spec)
    density = by_density(study, selection)
    for fmt in [f for f in formats if f in ("csv", "md")]:
        written.append(out / f"by_density{suffix}.{fmt}")
        WRITERS[fmt](density, written[-1], study.spec)
    written.append(out / "trials.csv")
    study.trials.to_csv(written[-1], index=False)
    written.append(out / f"accuracy_vs_density{suffix}.png")
    plot_accuracy_vs_density(study, density, best, written[-1], selection)
    written.append(out / "summary.md")
    written[-1].write_text(summary(study, best, selection))
    return written


def plot_accuracy_vs_density(study: Study, density: pd.DataFrame, best: pd.DataFrame, path: Path, selection: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    cells = study.spec.compare_within
    for ax, short, title in zip(axes, ("test_wg", "test_unbiased"), ("test worst-group accuracy", "test unbiased accuracy")):
        for i, (cell, rows) in enumerate(density.groupby(cells, sort=True)):
            label = ", ".join(f"{v:g}%" if k == "conflict_pct" else str(v) for k, v in zip(cells, cell))
            rows = rows.sort_values("density")
            err = rows[f"{short}_se"].fillna(0.0)
            line = ax.errorbar(rows["density"], rows[f"{short}_mean"], yerr=err, marker="o", capsize=3, label=label)
            base = best[(best.get("status") == "baseline")] if "status" in best else best.iloc[0:0]
            for _, b in base.iterrows():
                if tuple(b[k] for k in cells) == tuple(cell):
                    ax.axhline(b[f"{short}_mean"], color=line[0].get_color(), linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("density (fraction of weights kept)")
        ax.set_ylabel(f"{title} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(title="cell (dashed: dense ERM)", fontsize=8)
    tag = "" if selection == "val" else " — ORACLE selection on test"
    fig.suptitle(f"study {study.name}: best lambda per density{tag}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(study: Study, best: pd.DataFrame, selection: str) -> str:
    t, m, spec = study.trials, study.manifest, study.spec
    lines = [f"# Study {study.name}", ""]
    if spec.description:
        lines += [spec.description, ""]
    if selection == "oracle":
        lines += ["**ORACLE selection: configs chosen on test worst-group accuracy (not a fair result).**", ""]
    lines += ["## What ran", ""]
    for phase, info in m["phases"].items():
        sub = t[t["phase"] == phase]
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sub["status"].value_counts().items()) or "none"
        lines.append(f"- {phase}: {info['status']}, {len(sub)} trials ({counts}), "
                     f"wall time {info.get('wall_seconds', 0) / 60:.1f} min")
    search = t[t["phase"] == "search"]
    full = m.get("grid_trials", len(search)) * spec.max_epochs
    spent = int(search["epochs_run"].sum())
    lines += [f"- search trial-epochs: {spent} of {full} for the full grid ({spent / max(1, full):.0%}); "
              f"{int(search['stopped_early'].sum())} trials stopped early by ASHA",
              f"- confirm trial-epochs: {int(t[t['phase'] == 'confirm']['epochs_run'].sum())}",
              f"- failed trials: {int((t['status'] == 'ERROR').sum())}; trials retried after a worker failure: "
              f"{int((t['retries'] > 0).sum())}",
              f"- trial training time: {t['train_seconds'].sum() / 60:.1f} min", "",
              "## Reproduce", "", "```", m.get("command", ""), "```", "",
              "## Best config per cell", "", to_markdown(presentable(best, spec))]
    return "\n".join(lines)


# ------------------------------------------------------------ sparse models

MODEL_FORMAT = "rest-sparse-model-v1"


def selected_trial(study: Study, cell: str) -> pd.Series:
    """The trial behind a cell's selected config: its seed with the best validation score."""
    keys = study.spec.compare_within
    parts = cell.split(":")
    if len(parts) != len(keys):
        raise ExportError(f"--cell {cell} must give {':'.join(k.upper() for k in keys)}, e.g. colored_digits:1")
    best = best_configs(study)
    t = study.trials
    match = best
    for key, text in zip(keys, parts):
        match = match[[_same(v, text) for v in match[key]]]
    match = match[match["status"] != "baseline"]
    if match.empty:
        cells = sorted({":".join(_cell(r[k]) for k in keys) for _, r in best.iterrows()})
        raise ExportError(f"unknown cell {cell}; cells with results: {', '.join(cells) or 'none'}")
    row = match.iloc[0]
    phase = "confirm" if (t["phase"] == "confirm").any() else "search"
    pool = t[(t["phase"] == phase) & (t["role"] != "erm_baseline") & (t["epochs_run"] > 0)]
    for key in keys + _searched(study.spec):
        pool = pool[[_same(v, _cell(row[key])) for v in pool[key]]]
    return pool.sort_values("best_val_worst_group_acc", ascending=False).iloc[0]


def _same(value, text: str) -> bool:
    try:
        return float(value) == float(text)
    except (TypeError, ValueError):
        return str(value) == text


def _newest_state(trial_dir: Path) -> dict:
    import torch

    for ckpt in sorted(trial_dir.glob("checkpoint_*"), reverse=True):
        try:
            return torch.load(ckpt / "state.pt", weights_only=False, map_location="cpu")
        except Exception as exc:  # an incomplete checkpoint: try the previous one
            log.warning("skipping %s: %s", ckpt, exc)
    raise ExportError(f"trial {trial_dir.name} has no readable checkpoint; resume the study first")


def sparse_model_state(state: dict) -> dict:
    """The best-epoch weights of a training checkpoint, masked weights stored as bitmap + values."""
    import torch

    weights = state.get("best_weights") or {"model": state["model"], "masks": state["sparse"]["masks"]}
    dense, sparse = {}, {}
    for name, tensor in weights["model"].items():
        mask = weights["masks"].get(name)
        if mask is None:
            dense[name] = tensor
        else:
            bits = np.packbits(mask.flatten().numpy())
            sparse[name] = {"shape": tuple(tensor.shape), "bitmap": torch.from_numpy(bits),
                            "values": tensor.flatten()[mask.flatten()].clone()}
    return {"format": MODEL_FORMAT, "settings": state["settings"], "epoch": state["best"].get("best_epoch"),
            "metrics": state["best"], "dense": dense, "sparse": sparse}


def save_sparse_model(state: dict, path: Path) -> Path:
    import torch

    path = path.expanduser().resolve()
    if path.exists():
        raise ExportError(f"{path} already exists; choose another --out (nothing was overwritten)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(sparse_model_state(state), path)
    except OSError as exc:
        raise ExportError(f"cannot write {path} ({exc.strerror}); choose a writable --out") from None
    return path


def load_model(path: str | Path):
    """A model saved by `export-model`, in eval mode, with its masked weights restored."""
    import torch

    from .data import get_dataset_spec
    from .models import build_model
    from .settings import TrainSettings

    saved = torch.load(Path(path), weights_only=False, map_location="cpu")
    if saved.get("format") != MODEL_FORMAT:
        raise ExportError(f"{path} is not a rest-tune sparse model file")
    settings = TrainSettings.from_dict(saved["settings"])
    spec = get_dataset_spec(settings.dataset)
    model = build_model(settings.model or spec.default_model, spec.num_classes, spec.image_size, settings.width)
    weights = dict(saved["dense"])
    for name, entry in saved["sparse"].items():
        numel = int(np.prod(entry["shape"]))
        mask = torch.from_numpy(np.unpackbits(entry["bitmap"].numpy())[:numel].astype(bool))
        full = torch.zeros(numel, dtype=entry["values"].dtype)
        full[mask] = entry["values"]
        weights[name] = full.view(entry["shape"])
    model.load_state_dict(weights)
    return model.eval()
