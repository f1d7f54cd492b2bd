"""The name tuples that cheap modules repeat equal the registries they stand for.

``rest/settings.py`` and ``rest/cli/prepare.py`` list registry names without importing
the registries (which import torch or numpy), so that validation and ``--help`` stay
fast. These tests are what keeps the copies true.
"""

from __future__ import annotations

import pytest


def _pairs() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """name -> (the cheap copy, the real registry's keys, in registry order)."""
    from rest import selection, settings
    from rest.cli import prepare as cli_prepare
    from rest.core import device, reweight, sparse, train
    from rest.core.data import DATASETS
    from rest.core.models import MODELS, STEMS

    return {
        "settings.DATASET_NAMES": (settings.DATASET_NAMES, tuple(DATASETS)),
        "settings.MODEL_NAMES": (settings.MODEL_NAMES, tuple(MODELS)),
        "settings.SPARSE_METHOD_NAMES": (settings.SPARSE_METHOD_NAMES, tuple(sparse.METHODS)),
        "settings.ALLOCATION_NAMES": (settings.ALLOCATION_NAMES, tuple(sparse.ALLOCATIONS)),
        "settings.REWEIGHT_NAMES": (settings.REWEIGHT_NAMES, tuple(reweight.STRATEGIES)),
        "settings.OPTIMIZER_NAMES": (settings.OPTIMIZER_NAMES, tuple(train.OPTIMIZERS)),
        "settings.SCHEDULE_NAMES": (settings.SCHEDULE_NAMES, tuple(train.SCHEDULES)),
        "settings.STEM_NAMES": (settings.STEM_NAMES, tuple(STEMS)),
        "settings.PRECISION_NAMES": (
            settings.PRECISION_NAMES,
            ("auto", *device.PRECISIONS),
        ),  # auto: the device's choice
        "settings.MEMORY_FORMAT_NAMES": (settings.MEMORY_FORMAT_NAMES, ("auto", *device.MEMORY_FORMATS)),
        "settings.PRIMARY_METRIC_NAMES": (settings.PRIMARY_METRIC_NAMES, tuple(selection.PRIMARY_METRIC_KEYS)),
        "cli_prepare.CHECK_DATASET_NAMES": (
            cli_prepare.CHECK_DATASET_NAMES,
            tuple(n for n, s in DATASETS.items() if s.needs_root),
        ),
    }


NAMES = [
    "settings.DATASET_NAMES", "settings.MODEL_NAMES", "settings.SPARSE_METHOD_NAMES", "settings.ALLOCATION_NAMES",
    "settings.REWEIGHT_NAMES", "settings.OPTIMIZER_NAMES", "settings.SCHEDULE_NAMES", "settings.STEM_NAMES",
    "settings.PRECISION_NAMES", "settings.MEMORY_FORMAT_NAMES", "settings.PRIMARY_METRIC_NAMES",
    "cli_prepare.CHECK_DATASET_NAMES",
]  # fmt: skip


def test_every_pair_is_listed():
    assert sorted(_pairs()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_names_match_the_registry(name):
    copy, registry = _pairs()[name]
    assert copy == registry, f"{name} lists {copy}; the registry holds {registry}"


def test_prepare_data_builds_registered_folder_datasets():
    """Each tree prepare-data builds is read by a registered folder dataset with as many classes."""
    from rest.core.data import DATASETS
    from rest.core.prepare import RECIPES

    for name, recipe in RECIPES.items():
        assert name in DATASETS and DATASETS[name].needs_root, name
        assert recipe.num_classes == DATASETS[name].num_classes, name
