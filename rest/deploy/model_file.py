"""Compact sparse model files: `export-model` writes a selected trial's weights (values of
the kept weights plus a bitmap of where they are), `rest.load_model` reads them back exactly.

Files are loaded with ``weights_only=True``: a crafted file cannot run code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rest import selection
from rest.report.export import BASELINE_ROLES, ExportError, _pool, _primary, best_configs, format_value
from rest.report.results import StudyResults
from rest.study.contract import COMPACT_FORMAT, checkpoint_states, is_compact

MODEL_FORMAT = "rest-sparse-model-v1"
PROG = "tune_search.py"  # the command a message tells the user to run


def selected_trial(study: StudyResults, cell: str):
    """The trial behind a cell's selected config: of its seeds, the one the selection rule ranks first."""
    spec = study.spec
    keys = spec.compare_within
    parts = cell.split(":")
    if len(parts) != len(keys):
        raise ExportError(f"--cell {cell} must give {':'.join(k.upper() for k in keys)}, e.g. colored_digits:1")
    best = best_configs(study)
    chosen = best[best["status"] != "baseline"] if not best.empty else best
    match = chosen[[all(_same(r[k], text) for k, text in zip(keys, parts)) for _, r in chosen.iterrows()]]
    if match.empty:
        cells = sorted({":".join(format_value(r[k]) for k in keys) for _, r in chosen.iterrows()})
        raise ExportError(f"unknown cell {cell}; cells with results: {', '.join(cells) or 'none'}")
    row = match.iloc[0]
    pool = _pool(study.trials())
    pool = pool[~pool["role"].isin(list(BASELINE_ROLES))]
    for key in keys + spec.searched_keys():
        pool = pool[[_same(v, format_value(row[key])) for v in pool[key]]]
    primary, prefix = _primary(spec, "val")
    (index,) = selection.select(pool.to_dict("records"), primary, prefix)
    trial_id = pool.iloc[index]["trial_id"]
    return next(t for t in study.all_trials() if t.trial_id == trial_id)


def _same(value, text: str) -> bool:
    try:
        return float(value) == float(text)
    except (TypeError, ValueError):
        return str(value) == text


def weights_epoch(state: dict) -> int:
    """The epoch whose weights ``sparse_model_state`` takes from a training state."""
    if is_compact(state):
        return int(state["weights_epoch"])
    return int(state["best"]["best_epoch"]) if state.get("best_weights") else int(state["epoch"])


def trial_state(trial) -> dict:
    """The training state that holds the weights of the trial's selected epoch, the one its
    table rows report; refused, naming the trial and the epoch, when no readable one does.

    The newest checkpoint holds them; an older one does too if it was written at or after
    that epoch and chose the same one. An older state's best-so-far weights from an
    earlier epoch are never taken in their place.
    """
    selected = trial.selected()
    if not selected:
        raise ExportError(f"trial {trial.trial_id} has no finished epoch; resume the study first")
    epoch, unreadable = int(selected["epoch"]), []
    for ckpt, state, _ in checkpoint_states(trial.location):
        if state is None:
            unreadable.append(ckpt.name)
        elif weights_epoch(state) == epoch:
            return state
        elif int(state["epoch"]) < epoch:
            break  # written before the selected epoch: neither it nor older ones hold its weights
    why = f"checkpoint {', '.join(unreadable)} is unreadable" if unreadable else "no checkpoint holds them"
    out = f"runs/retrain-{trial.trial_id}"
    raise ExportError(
        f"the weights of trial {trial.trial_id}'s selected epoch {epoch}, the one the tables report, cannot be "
        f"read ({why}); no model file was written. Retrain that config with its stored settings: "
        f"{retrain_command(trial.config, out)} ; then: {PROG} export-model {out}"
    )


def retrain_command(config: dict, out: str) -> str:
    """The `train` command that trains a trial's config again: every setting that differs from the default."""
    import dataclasses
    import shlex

    from rest.settings import TrainSettings

    settings = TrainSettings.from_dict({k: v for k, v in config.items() if k != "extra"})
    default = TrainSettings()
    flags = [
        f"--{f.name.replace('_', '-')}={shlex.quote(str(getattr(settings, f.name)))}"
        for f in dataclasses.fields(settings)
        if "help" in f.metadata and getattr(settings, f.name) != getattr(default, f.name)
    ]
    return " ".join([PROG, "train", *flags, "--out", shlex.quote(out)])


def is_train_run(path: str) -> bool:
    """A local `train --out` directory (settings.json and checkpoint.pt, no study manifest)."""
    folder = Path(path).expanduser()
    return "://" not in str(path) and (folder / "checkpoint.pt").is_file() and (folder / "settings.json").is_file()


def run_state(run: Path) -> dict:
    """The training state of a `train --out` directory (its last epoch's checkpoint)."""
    import torch

    try:
        return torch.load(Path(run) / "checkpoint.pt", weights_only=False, map_location="cpu")  # our own file
    except Exception as exc:
        raise ExportError(
            f"{run}/checkpoint.pt cannot be read ({str(exc).splitlines()[0][:120]}); "
            f"train the run again or 'train --resume {run}'"
        ) from None


def sparse_model_state(state: dict) -> dict:
    """The best-epoch weights of a training checkpoint, masked weights stored as bitmap + values."""
    import torch

    if is_compact(state):
        return state["model_file"]  # made by this function when the trial was compacted

    weights = state.get("best_weights") or {"model": state["model"], "masks": state["sparse"]["masks"]}
    dense, sparse = {}, {}
    for name, tensor in weights["model"].items():
        mask = weights["masks"].get(name)
        if mask is None:
            dense[name] = tensor
        else:
            bits = np.packbits(mask.flatten().numpy())
            sparse[name] = {
                "shape": tuple(tensor.shape),
                "bitmap": torch.from_numpy(bits),
                "values": tensor.flatten()[mask.flatten()].clone(),
            }
    return {
        "format": MODEL_FORMAT,
        "settings": state["settings"],
        "epoch": state["best"].get("best_epoch"),
        "metrics": state["best"],
        "dense": dense,
        "sparse": sparse,
    }


def compact_state(state: dict) -> dict:
    """What a finished trial keeps of its training state: the model file ``export-model`` writes
    from it, the epoch its weights are from, its best-so-far metrics and its final record (what
    a resumed trial reports again). No optimizer state, no non-best weights."""
    history = state.get("history") or []
    return {
        "format": COMPACT_FORMAT,
        "settings": state["settings"],
        "epoch": int(state["epoch"]),
        "best": dict(state["best"]),
        "weights_epoch": weights_epoch(state),
        "final_record": history[-1] if history else None,
        "model_file": sparse_model_state(state),
    }


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


def read_model_file(path: str | Path) -> dict:
    """The contents of a model file written by `export-model`: settings, epoch, metrics, weights."""
    import torch

    # Tensors and plain types only: a file someone sent you cannot run code when loaded.
    try:
        saved = torch.load(Path(path), weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ExportError(f"{path} does not exist; pass a file written by 'tune_search.py export-model'") from None
    except IsADirectoryError:
        raise ExportError(f"{path} is a directory; pass a file written by 'tune_search.py export-model'") from None
    except Exception as exc:  # pickle.UnpicklingError (objects beyond tensors), or not a torch file at all
        raise ExportError(
            f"{path} is not a plain rest-tune model file ({str(exc).splitlines()[0][:120]}); "
            f"only files written by 'tune_search.py export-model' load"
        ) from None
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise ExportError(f"{path} is not a rest-tune sparse model file")
    return saved


def load_model(path: str | Path, engine: str = "dense"):
    """A model saved by `export-model`, in eval mode, with its masked weights restored.

    engine "dense" gives the PyTorch model itself; "sparse" gives it for fast CPU
    inference: BatchNorm folded into the convolutions, and layers below the measured
    crossover density run as sparse kernels (``rest.deploy.infer``), with the same predictions.
    """
    import torch

    from rest.core.data import get_dataset_spec
    from rest.core.models import build_model
    from rest.deploy.infer import ENGINES, make_engine
    from rest.settings import TrainSettings

    if engine not in ENGINES:
        raise ExportError(f"unknown engine '{engine}'; choose from {', '.join(ENGINES)}")
    saved = read_model_file(path)
    settings = TrainSettings.from_dict(saved["settings"])
    spec = get_dataset_spec(settings.dataset)
    model = build_model(
        settings.model or spec.default_model, spec.num_classes, spec.image_size, settings.width, stem=settings.stem
    )
    weights = dict(saved["dense"])
    for name, entry in saved["sparse"].items():
        numel = int(np.prod(entry["shape"]))
        mask = torch.from_numpy(np.unpackbits(entry["bitmap"].numpy())[:numel].astype(bool))
        full = torch.zeros(numel, dtype=entry["values"].dtype)
        full[mask] = entry["values"]
        weights[name] = full.view(entry["shape"])
    model.load_state_dict(weights)
    return make_engine(model.eval(), engine)


SPLITS = ("test", "valid", "train")


def predict_file(
    path,
    engine: str = "dense",
    batch_size: int = 256,
    split: str = "test",
    dataset: str | None = None,
    conflict_pct: float | None = None,
    data_root: str | None = None,
) -> dict:
    """Accuracy (the project's group metrics) and throughput of an exported model on a dataset split.

    The dataset defaults to the one the model was trained on (its stored settings).
    """
    import torch

    from rest.core.batches import to_input
    from rest.core.data import DataError, get_dataset_spec, load_dataset
    from rest.core.train import group_accuracies
    from rest.deploy.infer import ENGINES, layer_plan, timed_logits
    from rest.settings import TrainSettings

    if engine not in ENGINES:
        raise ExportError(f"unknown engine '{engine}'; choose from {', '.join(ENGINES)}")
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; choose from {', '.join(SPLITS)}")
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size} must be at least 1")
    if conflict_pct is not None and not 0.0 < float(conflict_pct) < 100.0:  # nan and inf too
        raise DataError(
            f"--conflict-pct {conflict_pct:g} is outside (0, 100); give a ratio the dataset has, e.g. 1 or 5"
        )
    settings = TrainSettings.from_dict(read_model_file(path)["settings"])
    dataset = dataset or settings.dataset
    trained = get_dataset_spec(settings.dataset)
    spec = get_dataset_spec(dataset)
    if (spec.num_classes, spec.image_size) != (trained.num_classes, trained.image_size):
        raise ExportError(
            f"the model was trained on {settings.dataset} ({trained.num_classes} classes, "
            f"{trained.image_size} px); {dataset} has {spec.num_classes} classes at {spec.image_size} px: "
            f"pass a dataset of the same kind"
        )
    same = dataset == settings.dataset
    pct = conflict_pct if conflict_pct is not None else (settings.conflict_pct if same else 1.0)
    root = data_root or (settings.data_root if same else None)
    data = load_dataset(dataset, pct, root)
    part = getattr(data, split)
    model = load_model(path, engine)
    logits, speed = timed_logits(model, part.images, batch_size, lambda x: to_input(x, spec))
    result = {
        "dataset": dataset,
        "conflict_pct": pct,
        "split": split,
        "engine": engine,
        "batch_size": batch_size,
        "samples": len(part),
        "images_per_s": speed,
        "threads": torch.get_num_threads(),
    }
    if part.b is not None:
        result.update(group_accuracies(logits.argmax(1) == part.y, part.y, part.b))
    if engine == "sparse":
        plan = layer_plan(model, min(batch_size, len(part)))
        result["sparse_layers"] = sum(p["kernel"] == "sparse" for p in plan)
        result["layers"] = len(plan)
    return result
