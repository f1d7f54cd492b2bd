"""Datasets: the embedded generator, the LfF folder loader, the cache."""

import numpy as np
import pytest
import torch

from conftest import TINY, write_png_tree
from rest.core.data import DATASETS, DataError, folder, load_dataset
from rest.core.data.digits import build_colored_digits
from rest.core.data.protocol import COLOUR_JITTER, COLOURS, assign_bias, colourise, conflict_quota


def test_generation_is_deterministic_from_the_seed():
    a = build_colored_digits(1.0, seed=3, per_class=TINY)
    b = build_colored_digits(1.0, seed=3, per_class=TINY)
    c = build_colored_digits(1.0, seed=4, per_class=TINY)
    for split in a:
        for x, y in zip(a[split], b[split]):
            assert np.array_equal(x, y)
    assert not np.array_equal(a["train"][0], c["train"][0])


@pytest.mark.parametrize("pct", [0.5, 1.0, 2.0, 5.0])
def test_exact_conflict_quotas_per_class(pct):
    y = np.repeat(np.arange(10), 1000)
    b = assign_bias(y, pct, np.random.default_rng(0))
    for c in range(10):
        assert int(((y == c) & (b != c)).sum()) == conflict_quota(1000, pct) == round(10 * pct)
    assert (b[b != y] >= 0).all() and (b < 10).all()


def test_splits_train_and_valid_biased_test_unbiased():
    arrays = build_colored_digits(5.0, seed=0, per_class={"train": 200, "valid": 100, "test": 100})
    _, y, b = arrays["train"]
    assert (y != b).mean() == pytest.approx(0.05)
    _, y, b = arrays["valid"]
    assert (y != b).mean() == pytest.approx(0.05)
    _, y, b = arrays["test"]
    assert 0.8 < (y != b).mean() < 0.97  # bias independent of y: ~90 % conflicting
    images = arrays["train"][0]
    assert images.dtype == np.uint8 and images.shape[1:] == (3, 28, 28)


def test_colour_carries_the_bias_label():
    images, y, b = build_colored_digits(5.0, seed=0, per_class=TINY)["train"]
    from rest.core.data.protocol import COLOURS

    # the mean colour of the brightest pixels is nearest to the bias colour
    flat = images.reshape(len(images), 3, -1).astype(float)
    bright = flat.sum(1).argmax(1)
    colour = flat[np.arange(len(images)), :, bright]
    nearest = np.linalg.norm(
        colour[:, None, :] / colour.max(1, keepdims=True)[:, None]
        - COLOURS[None] / COLOURS.max(1, keepdims=True)[None],
        axis=2,
    ).argmin(1)
    assert (nearest == b).mean() > 0.95


@pytest.mark.parametrize("sigma", [0.005, 0.02])
def test_colour_noise_has_the_asked_sigma(sigma):
    """Per-image colour noise: std sigma (a fraction of 255) around the bias colour."""
    b = np.full(4000, 3)  # COLOURS[3] = (0, 130, 200): channels 1 and 2 are far from clipping
    images = colourise(np.full((4000, 2, 2), 255, dtype=np.uint8), b, np.random.default_rng(0), sigma)
    channels = images[:, 1:, 0, 0].astype(float)
    assert channels.mean(0) == pytest.approx(COLOURS[3, 1:], abs=0.5)
    assert channels.std(0) == pytest.approx([sigma * 255] * 2, rel=0.2, abs=0.3)  # abs: rounding to integers


def test_embedded_dataset_keeps_its_colour_noise():
    assert COLOUR_JITTER == 0.02  # cached colored_digits datasets and shipped results depend on it


def test_bffhq_inputs_as_rest_feeds_them():
    """REST's data/bffhq_dataset.py: no augmentation on any split, CIFAR-10 normalisation."""
    spec = DATASETS["bffhq"]
    assert spec.augment == "none"
    assert spec.mean == (0.4914, 0.4822, 0.4465) and spec.std == (0.2023, 0.1994, 0.2010)
    assert (spec.image_size, spec.num_classes, spec.default_model) == (128, 2, "resnet18")


def test_embedded_dataset_is_cached_and_memory_mapped(monkeypatch, tmp_path):
    monkeypatch.setenv("REST_TUNE_CACHE", str(tmp_path))
    from rest.core.data import digits

    monkeypatch.setattr(digits, "PER_CLASS", TINY)
    first = load_dataset("colored_digits", 2.0)
    assert list(tmp_path.iterdir())
    monkeypatch.setattr(digits, "build_colored_digits", lambda *a, **k: pytest.fail("regenerated"))
    second = load_dataset("colored_digits", 2.0)
    assert torch.equal(first.train.images, second.train.images)


def test_a_truncated_cache_entry_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("REST_TUNE_CACHE", str(tmp_path))
    from rest.core.data import digits

    monkeypatch.setattr(digits, "PER_CLASS", TINY)
    expected = load_dataset("colored_digits", 2.0).train.images.clone()  # a copy: the cache is memory-mapped
    (images,) = tmp_path.rglob("train_images.npy")
    images.write_bytes(images.read_bytes()[:50])  # a crash or a full disk mid-copy
    again = load_dataset("colored_digits", 2.0)
    assert torch.equal(expected, again.train.images)


def test_folder_loader_reads_labels_from_names_and_reuses_its_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REST_TUNE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cmnist"
    write_png_tree(root, {"align": 3, "conflict": 1, "valid": 2, "test": 2}, size=28)
    data = load_dataset("cmnist", 1.0, str(root))
    assert len(data.train) == 40 and len(data.valid) == 20 and len(data.test) == 20
    assert int(data.train.conflicting.sum()) == 10
    assert data.train.images.shape[1:] == (3, 28, 28) and data.train.images.dtype == torch.uint8
    monkeypatch.setattr(folder, "_decode", lambda *a: pytest.fail("decoded again"))
    again = load_dataset("cmnist", 1.0, str(root))
    assert torch.equal(again.test.images, data.test.images)


def test_folder_loader_resizes_to_the_registered_size(tmp_path, monkeypatch):
    monkeypatch.setenv("REST_TUNE_CACHE", str(tmp_path / "cache"))
    write_png_tree(tmp_path / "c", {"align": 1, "conflict": 1, "valid": 1, "test": 1}, size=20)
    assert load_dataset("cifar10c", 1.0, str(tmp_path / "c")).train.images.shape[2:] == (32, 32)


def test_bad_trees_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("cmnist", 1.0, str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_dataset("cmnist", 1.0, str(tmp_path / "empty"))
    root = tmp_path / "t"
    write_png_tree(root, {"align": 1, "conflict": 1, "valid": 1, "test": 1})
    with pytest.raises(DataError, match=r"5% is missing.*present: 1pct"):
        load_dataset("cmnist", 5.0, str(root))
    bad = root / "1pct" / "align" / "0" / "oops.png"
    bad.write_bytes(b"")
    with pytest.raises(DataError, match="oops.png does not match"):
        load_dataset("cmnist", 1.0, str(root))
    bad.unlink()
    broken = root / "test" / "3" / "999_3_3.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*999_3_3.png"):
        load_dataset("cmnist", 1.0, str(root))
    with pytest.raises(DataError, match="pass --data-root"):
        load_dataset("cmnist", 1.0, None)


def test_registry_lists_its_entries_in_errors():
    with pytest.raises(DataError, match="choose from colored_digits, cmnist, cifar10c, bffhq"):
        load_dataset("nope", 1.0)


# ------------------------------------------------------------------ subsample


@pytest.mark.parametrize("seed", range(20))
def test_apportion_quotas_are_floor_or_ceiling_and_sum_to_n(seed):
    from rest.core.data.sample import apportion

    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 50, size=rng.integers(1, 12))
    n = int(rng.integers(0, sizes.sum() + 1))
    quotas = apportion(sizes, n, rng)
    exact = n * sizes / max(1, sizes.sum())
    assert quotas.sum() == n and (quotas >= np.floor(exact)).all() and (quotas <= np.ceil(exact)).all()


@pytest.mark.parametrize("n", [10, 13, 37, 100, 250])
def test_stratified_sample_keeps_every_class_and_the_conflicting_share(n):
    from rest.core.data.sample import stratified_indices

    y = np.repeat(np.arange(10), [200, 190, 180, 170, 160, 150, 140, 130, 120, 60])
    b = assign_bias(y, 2.0, np.random.default_rng(1))
    y, b = y[::-1].copy(), b[::-1].copy()  # stored class by class, as a folder tree lists them
    idx = stratified_indices(y, b, n, np.random.default_rng(5))
    assert len(idx) == len(set(idx)) == n and set(y[idx]) == set(range(10))
    assert abs(int((y[idx] != b[idx]).sum()) - n * (y != b).mean()) <= 1
    assert np.array_equal(idx, stratified_indices(y, b, n, np.random.default_rng(5)))


def test_subsample_is_recorded_and_small_splits_stay_whole(tiny_data):
    sub = tiny_data.subsample(120)
    assert (len(sub.train), len(sub.valid), len(sub.test)) == (120, 120, 100)  # valid 200, test 100 stored
    assert torch.equal(sub.test.y, tiny_data.test.y)
    assert sub.describe() == {
        "data_subsample_seed": 0,
        "data_train_samples": 120,
        "data_train_classes": 10,
        "data_train_conflicting": 6,
        "data_valid_samples": 120,
        "data_valid_classes": 10,
        "data_valid_conflicting": 6,
        "data_test_samples": 100,
        "data_test_classes": 10,
        "data_test_conflicting": int(tiny_data.test.conflicting.sum()),
    }
    assert tiny_data.describe()["data_subsample_seed"] == -1
