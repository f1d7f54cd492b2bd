"""rest-tune: REST (reweighted sparse training) as a Ray Tune hyperparameter study.

Modules: data (datasets), models, sparse (dynamic sparsity), reweight (sampling),
train (one configuration), space (study files), study (Ray Tune), export (tables,
plots, sparse models), cli (the command line). Heavy dependencies load lazily.
"""

__version__ = "0.1.0"


def load_model(path):
    """Load a sparse model written by `tune_search.py export-model` (eval mode)."""
    from .export import load_model as _load

    return _load(path)
