"""Dataset registry: every dataset loads into the same ``BiasedData`` form."""

from __future__ import annotations

from functools import partial

from rest.core.data.base import BiasedData, DataError, DatasetSpec, Split
from rest.core.data.digits import load_colored_digits
from rest.core.data.folder import load_folder

_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# BFFHQ as REST's code feeds it (data/bffhq_dataset.py): no augmentation on any split and
# CIFAR-10's mean with the widely copied CIFAR-10 "std" (0.2023, 0.1994, 0.2010), not
# ImageNet statistics. See docs/fidelity.md.
_REST_BFFHQ_MEAN, _REST_BFFHQ_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
_UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # digits: plain [0, 1] pixels, as LfF does

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("colored_digits", load_colored_digits, 10, 28, "cnn", *_UNIT, "none", needs_root=False),
        DatasetSpec(
            "cmnist",
            partial(load_folder, "cmnist", size=28, num_classes=10),
            10,
            28,
            "cnn",
            *_UNIT,
            "none",
            needs_root=True,
        ),
        DatasetSpec(
            "cifar10c",
            partial(load_folder, "cifar10c", size=32, num_classes=10),
            10,
            32,
            "resnet18",
            _CIFAR_MEAN,
            _CIFAR_STD,
            "crop_flip",
            needs_root=True,
        ),
        DatasetSpec(
            "bffhq",
            partial(load_folder, "bffhq", size=128, num_classes=2),
            2,
            128,
            "resnet18",
            _REST_BFFHQ_MEAN,
            _REST_BFFHQ_STD,
            "none",
            needs_root=True,
        ),
    )
}


def get_dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, conflict_pct: float, root: str | None = None) -> BiasedData:
    """Load a registered dataset at one conflict ratio (cached after the first load)."""
    return get_dataset_spec(name).loader(conflict_pct=float(conflict_pct), root=root)


__all__ = ["BiasedData", "DataError", "DatasetSpec", "Split", "DATASETS", "get_dataset_spec", "load_dataset"]
