"""One training run, torch only: datasets, models, dynamic sparsity, reweighting, the training loop.

Imports only the foundation (``rest.errors``, ``rest.settings``, ``rest.selection``, ``rest.storage``,
``rest.tables``). Its public surface, by module:

- ``train``: ``train`` (one configuration, a record per epoch), ``Trainer`` (its state and checkpoint),
  ``group_accuracies``;
- ``data``: the dataset registry (``get_dataset_spec``, ``load_dataset``); ``prepare``: building and checking dataset trees;
- ``models``: the model registry; ``sparse``: RigL/SET masks; ``reweight``: upweighting bias-conflicting samples;
- ``losses``, ``pgd``, ``dcwp``: the methods beside REST; ``batches``: model input and augmentation;
- ``device``: every CPU/CUDA choice (precision, autocast, loss scaler, memory format, data placement);
- ``corruptions``: the ten Corrupted CIFAR-10 corruptions;
- ``model_format``: the sparse model-file format (kept values plus a bitmap) and a finished trial's compact state.
"""

__all__ = [
    "batches",
    "corruptions",
    "data",
    "dcwp",
    "device",
    "losses",
    "model_format",
    "models",
    "pgd",
    "prepare",
    "reweight",
    "sparse",
    "train",
]
