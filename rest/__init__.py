"""rest-tune: REST (reweighted sparse training) as a Ray Tune hyperparameter study.

A foundation and five packages by layer (each ``__init__`` names its modules; tests/test_structure.py
enforces who imports whom):

- the foundation, here: errors, settings (the training settings), selection (what "best" means),
  storage, storage_retry, tables, and legacy (old module names, for studies written before this layout);
- ``rest.core``: one training run, torch only (data, models, sparse, train, the model-file format, ...);
  imports the foundation only;
- ``rest.study``: the study on Ray Tune (space, manifest, contract, search, trainable, driver, runner, ...);
  imports the foundation and core;
- ``rest.report``: read-only: the study reader, tables, export, plots, status; imports the foundation and
  the study's Ray-free on-storage contract;
- ``rest.deploy``: model files and fast sparse inference; imports the foundation and core (no pandas, no Ray);
- ``rest.cli`` (the command line) and ``rest.api`` (the Python API: ``run_study``, ``load_study``,
  ``export_model``) may import them all; ``load_model``, ``run_study`` and ``load_study`` are here.

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
