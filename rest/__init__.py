"""rest-tune: REST (reweighted sparse training) as a Ray Tune hyperparameter study.

Modules: data (datasets), prepare (building and checking dataset trees), models,
sparse (dynamic sparsity), reweight (sampling), train (one configuration), device
(CPU/CUDA choices: precision, loss scaler, memory format, data placement), memory
(bytes a trial puts on its device), space
(study files), study (the phases on Ray Tune) with manifest (the study directory),
search (per-cell ASHA and searchers), trainable (one trial), tracking (trackers),
driver (Ray connection, signals, lock), options (the driver's options, one path for the
command line and the API) and tune_ext (Ray internals), selection (what
"best" means), results (the study reader), storage (where studies and outputs live),
tables (the table printer), export (tables, plots, sparse models), infer (fast
sparse inference), api (the Python API), cli (the command line).
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
