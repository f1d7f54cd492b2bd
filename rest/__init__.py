"""rest-tune: REST (reweighted sparse training) as a Ray Tune hyperparameter study.

Packages by layer, each importing only the ones before it (each ``__init__`` names its modules):

- the foundation, here: errors, settings, selection (what "best" means), storage, storage_retry, tables;
- ``rest.core``: one training run, torch only (data, models, sparse, train, the model-file format, ...);
- ``rest.study``: the study on Ray Tune (space, manifest, search, trainable, driver, runner, compact, ...);
- ``rest.report``: read-only: the study reader, tables, export, plots, status;
- ``rest.deploy``: model files and fast sparse inference (foundation and core only: no pandas, no Ray);
- ``rest.api`` (the Python API, including ``export_model``) and ``rest.cli`` (the command line) use them all.

Heavy dependencies load lazily.
"""

__version__ = "0.1.0"

from rest import legacy as _legacy

_legacy.install()  # studies written before the layered layout name the old modules


def load_model(path, engine="dense"):
    """Load a sparse model written by `tune_search.py export-model` (eval mode).

    engine="sparse": BatchNorm folded, low-density layers run as sparse CPU kernels
    (faster, same predictions; see rest.deploy.infer).
    """
    from rest.deploy.model_file import load_model as _load

    return _load(path, engine)


def run_study(space, **options):
    """Run (or continue) a study from a study file; returns its results. See rest.api.run_study."""
    from rest.api import run_study as _run

    return _run(space, **options)


def load_study(name_or_path, storage=None):
    """Read a study's results (``.trials()``, ``.best_configs()``, ``.export(out)``). See rest.api."""
    from rest.api import load_study as _load

    return _load(name_or_path, storage)
