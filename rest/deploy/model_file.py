"""Sparse model files on disk: write one, read one back exactly (``rest.load_model``), evaluate it (``predict``).

The format (kept values plus a bitmap, ``rest.core.model_format``) is torch-only, and so is
this module: loading a model imports neither pandas nor Ray. Choosing which trial of a
study to write is the report layer's; ``rest.api.export_model`` does both.

Files are loaded with ``weights_only=True``: a crafted file cannot run code.
"""

from __future__ import annotations

from pathlib import Path

from rest.core.model_format import MODEL_FORMAT, model_weights, sparse_model_state
from rest.errors import UserError


class ModelFileError(UserError):
    pass


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
        raise ModelFileError(
            f"{run}/checkpoint.pt cannot be read ({str(exc).splitlines()[0][:120]}); "
            f"train the run again or 'train --resume {run}'"
        ) from None


def save_sparse_model(state: dict, path: Path) -> Path:
    """Write the model file of a training (or compact) state to a new file `path`; never overwrites one."""
    import torch

    path = path.expanduser().resolve()
    if path.exists():
        raise ModelFileError(f"{path} already exists; choose another --out (nothing was overwritten)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(sparse_model_state(state), path)
    except OSError as exc:
        raise ModelFileError(f"cannot write {path} ({exc.strerror}); choose a writable --out") from None
    return path


def read_model_file(path: str | Path) -> dict:
    """The contents of a model file written by `export-model`: settings, epoch, metrics, weights."""
    import torch

    # Tensors and plain types only: a file someone sent you cannot run code when loaded.
    try:
        saved = torch.load(Path(path), weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ModelFileError(f"{path} does not exist; pass a file written by 'tune_search.py export-model'") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a directory; pass a file written by 'tune_search.py export-model'") from None
    except Exception as exc:  # pickle.UnpicklingError (objects beyond tensors), or not a torch file at all
        raise ModelFileError(
            f"{path} is not a plain rest-tune model file ({str(exc).splitlines()[0][:120]}); "
            f"only files written by 'tune_search.py export-model' load"
        ) from None
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a rest-tune sparse model file")
    return saved


def load_model(path: str | Path, engine: str = "dense"):
    """A model saved by `export-model`, in eval mode, with its masked weights restored.

    engine "dense" gives the PyTorch model itself; "sparse" gives it for fast CPU
    inference: BatchNorm folded into the convolutions, and layers below the measured
    crossover density run as sparse kernels (``rest.deploy.infer``), with the same predictions.
    """
    from rest.core.data import get_dataset_spec
    from rest.core.models import build_model
    from rest.deploy.infer import ENGINES, make_engine
    from rest.settings import TrainSettings

    if engine not in ENGINES:
        raise ModelFileError(f"unknown engine '{engine}'; choose from {', '.join(ENGINES)}")
    saved = read_model_file(path)
    settings = TrainSettings.from_dict(saved["settings"])
    spec = get_dataset_spec(settings.dataset)
    model = build_model(
        settings.model or spec.default_model, spec.num_classes, spec.image_size, settings.width, stem=settings.stem
    )
    model.load_state_dict(model_weights(saved))
    return make_engine(model.eval(), engine)


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
    from rest.core.data.base import SPLIT_NAMES
    from rest.core.train import group_accuracies
    from rest.deploy.infer import ENGINES, layer_plan, timed_logits
    from rest.settings import TrainSettings

    if engine not in ENGINES:
        raise ModelFileError(f"unknown engine '{engine}'; choose from {', '.join(ENGINES)}")
    if split not in SPLIT_NAMES:
        raise DataError(f"unknown split '{split}'; choose from {', '.join(SPLIT_NAMES)}")
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
        raise ModelFileError(
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
