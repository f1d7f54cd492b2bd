"""Mixed precision on the CPU: the CUDA code path (autocast, fp16's loss scaler, channels_last,
streamed data) run here, for every method, in bf16 and fp16.

The models are tiny (ResNet-18 of width 2, 32 images per split, batch 16): this CPU has no
fp16 convolution kernel, so PyTorch falls back to a slow reference one there. The CIFAR stem
keeps every feature map at 4x4 or more: with the ImageNet stem the last stage is 1x1 at 28 px,
and BatchNorm's backward over 16 values overflows fp16 in most steps (the loss scaler then
skips them, as it should, and the loss barely moves).
"""

import io
import logging
import math

import pytest
import torch

from rest.core.device import PRECISIONS
from rest.core.train import Trainer
from rest.settings import TrainSettings

BASE = TrainSettings(
    model="resnet18",
    width=2,
    stem="cifar",
    epochs=2,
    batch_size=16,
    eval_batch_size=64,
    subsample=32,
    update_frequency=2,
    lr=0.05,
    seed=1,
    device="cpu",
    density=1.0,
)
SPARSE = dict(density=0.2)
# The methods of the methods study (search_spaces/methods_cmnist.yaml), each as it trains there.
METHODS = {
    "erm": dict(reweight="none"),
    "oracle": dict(reweight="oracle"),
    "jtt": dict(reweight="jtt"),
    "pgd": dict(reweight="pgd"),
    "dcwp": dict(sparse="dcwp", reweight="jtt", optimizer="adam", lr=0.01, **SPARSE),
    "rest-rigl": dict(sparse="rigl", reweight="oracle", **SPARSE),
    "rest-set": dict(sparse="set", reweight="oracle", **SPARSE),
}
UNTIMED = {"epoch_seconds"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a loaded machine two threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _roundtrip(state: dict) -> dict:
    """A checkpoint as it comes back from storage: serialised and read again."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _timeless(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in UNTIMED}


def assert_sparse_invariants(trainer: Trainer) -> None:
    """Exact counts; masked weights and every per-weight optimizer-state tensor exactly zero; fp32 masters."""
    sparse = trainer.sparse
    assert set(sparse.masks) == set(sparse.counts)
    for name, count in sparse.counts.items():
        mask, p = sparse.masks[name], sparse.params[name]
        assert int(mask.sum()) == count, name
        assert p.dtype == torch.float32 and torch.count_nonzero(p[~mask]) == 0, name
        state = [v for v in trainer.optimizer.state[p].values() if torch.is_tensor(v) and v.shape == p.shape]
        assert state, f"{name} has no optimizer state to check"
        for value in state:
            assert torch.count_nonzero(value[~mask]) == 0, name


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_resumes_exactly_in_low_precision(tiny_data, method, precision):
    s = BASE.replace(precision=precision, **METHODS[method])
    trainer = Trainer(s, tiny_data)
    assert trainer.amp.dtype is PRECISIONS[precision] and (trainer.amp.scaler is not None) == (precision == "fp16")
    first = trainer.run_epoch()
    assert_sparse_invariants(trainer)
    saved = _roundtrip(trainer.state_dict())
    second = trainer.run_epoch()
    assert_sparse_invariants(trainer)
    assert math.isfinite(second["train_loss"]) and second["train_loss"] < first["train_loss"]
    assert second["density"] == pytest.approx(SPARSE["density"] if "sparse" in METHODS[method] else 1.0, abs=2e-3)

    resumed = Trainer(s, tiny_data)
    resumed.load_state_dict(saved)
    assert _timeless(resumed.run_epoch()) == _timeless(second)
    for a, b in zip(trainer.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    if precision == "fp16":  # the loss scaler's state travels with the checkpoint
        assert saved["scaler"]["scale"] > 0 and resumed.amp.scaler.state_dict() == trainer.amp.scaler.state_dict()


@pytest.mark.parametrize("saved,now", [("bf16", "fp16"), ("fp16", "fp32")])
def test_a_checkpoint_resumes_in_another_precision(tiny_data, caplog, saved, now):
    """Weights and optimizer state are fp32 in every precision, so a checkpoint carries over (a
    GPU trial retried on a CPU node under precision auto does this); the loss scaler starts afresh."""
    s = BASE.replace(**METHODS["rest-rigl"])
    trainer = Trainer(s.replace(precision=saved), tiny_data)
    trainer.run_epoch()
    state = _roundtrip(trainer.state_dict())
    resumed = Trainer(s.replace(precision=now), tiny_data)
    with caplog.at_level(logging.WARNING, logger="rest.core.train"):
        resumed.load_state_dict(state)
    (note,) = [r.getMessage() for r in caplog.records]
    assert note.startswith(
        f"resuming a {saved} checkpoint in {now} after epoch 1: weights and optimizer state carry over"
    )
    for a, b in zip(trainer.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    if now == "fp16":
        assert resumed.amp.scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()  # fresh
    record = resumed.run_epoch()
    assert record["epoch"] == 2 and math.isfinite(record["train_loss"])
    assert_sparse_invariants(resumed)


def test_a_checkpoint_from_before_cpu_autocast_continues_in_fp32(tiny_data, caplog):
    """Checkpoints without a precision were written when the CPU always trained in fp32 (the old
    default setting, bf16, was CUDA-only): they resume on the CPU in fp32, bit for bit."""
    s = BASE.replace(**METHODS["rest-rigl"])
    trainer = Trainer(s.replace(precision="fp32"), tiny_data)
    trainer.run_epoch()
    state = _roundtrip(trainer.state_dict())
    del state["precision"]
    resumed = Trainer(s.replace(precision="bf16"), tiny_data)
    with caplog.at_level(logging.WARNING, logger="rest.core.train"):
        resumed.load_state_dict(state)
    assert "predates CPU autocast" in caplog.text and resumed.precision == "fp32" and resumed.amp.dtype is None
    assert _timeless(resumed.run_epoch()) == _timeless(trainer.run_epoch())


def test_a_bf16_trained_model_exports_and_both_engines_agree(tiny_data, tmp_path):
    """The model file of a bf16 run holds fp32 weights. Run in bf16 it gives exactly the test
    accuracy training reported; the dense and sparse engines (BN folded, every layer on the sparse
    kernel) run it in fp32 and agree within 1e-4. fp32 and bf16 logits differ by at most 2^-6 of
    their scale (bf16 keeps 8 significant bits), and a prediction differs only where the fp32
    top-two margin is within that tolerance."""
    from rest.core.batches import to_input
    from rest.deploy.infer import layer_plan, sparse_engine
    from rest.deploy.model_file import load_model, read_model_file, save_sparse_model

    trainer = Trainer(BASE.replace(precision="bf16", **METHODS["rest-rigl"]), tiny_data)
    record = trainer.run_epoch()
    path = save_sparse_model(trainer.state_dict(), tmp_path / "model.pt")
    assert all(e["values"].dtype == torch.float32 for e in read_model_file(path)["sparse"].values())
    dense = load_model(path)
    engine = sparse_engine(dense, ((1, 1.0),))
    assert all(p["kernel"] == "sparse" for p in layer_plan(engine, 1))
    test = trainer.data.test
    x = to_input(test.images, trainer.spec)
    with torch.no_grad():
        fp32, sparse = dense(x), engine(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = dense(x).float()
    assert float((bf16.argmax(1) == test.y).float().mean()) == record["best_test_unbiased_acc"]
    assert (fp32 - sparse).abs().max() <= 1e-4 * max(1.0, float(fp32.abs().max()))
    tolerance = 2**-6 * max(1.0, float(fp32.abs().max()))
    assert (fp32 - bf16).abs().max() <= tolerance
    top2 = fp32.topk(2, dim=1).values
    flipped = fp32.argmax(1) != bf16.argmax(1)
    assert bool(((top2[:, 0] - top2[:, 1])[flipped] <= 2 * tolerance).all())
    assert torch.equal(fp32.argmax(1), sparse.argmax(1))


def test_fold_bn_of_a_bf16_model_keeps_fp32_precision():
    from torch import nn

    from rest.deploy.infer import fold_bn

    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, bias=False).to(torch.bfloat16), nn.BatchNorm2d(4).to(torch.bfloat16)
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    weight, bias = fold_bn(conv.weight, None, bn)
    exact = conv.weight.double() * (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)).view(-1, 1, 1, 1)
    assert weight.dtype == bias.dtype == torch.float32 and torch.equal(weight, exact.float())


def test_channels_last_on_cpu_gives_the_metrics_of_nchw(tiny_data):
    """Same run in both layouts (CNN, RigL masks): losses within 1e-3 relative, accuracies within one sample."""
    s = BASE.replace(model="cnn", precision="fp32", **METHODS["rest-rigl"])
    runs = {}
    for layout in ("contiguous", "channels_last"):
        trainer = Trainer(s.replace(memory_format=layout), tiny_data)
        conv = trainer.sparse.params["0.weight"]
        assert conv.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
        runs[layout] = [trainer.run_epoch() for _ in range(2)]
        assert_sparse_invariants(trainer)
    for a, b in zip(runs["contiguous"], runs["channels_last"]):
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-3)
        for key in ("val_avg_acc", "val_worst_group_acc", "test_unbiased_acc", "test_conflict_acc"):
            assert abs(a[key] - b[key]) <= 1 / 32 + 1e-9


def test_data_above_the_device_budget_is_streamed_with_the_same_metrics(tiny_data):
    """data_device_fraction 0: the dataset stays in host memory and each batch is copied to the
    device; on the CPU both placements read the same tensors, so the metrics are bit-identical."""
    s = BASE.replace(**METHODS["rest-rigl"], epochs=1)
    on_device, streamed = Trainer(s, tiny_data), Trainer(s.replace(data_device_fraction=0.0), tiny_data)
    assert (on_device.placement, streamed.placement) == ("device", "host")
    assert _timeless(on_device.run_epoch()) == _timeless(streamed.run_epoch())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pgd_gradient_norms_under_autocast_are_fp32(tiny_data, precision):
    """PGD's closed-form per-sample norms: the forward in the run's precision, the norms in fp32,
    within 5 % of the fp32 run's."""
    from rest.core import pgd
    from rest.core.data import get_dataset_spec
    from rest.core.device import make_amp
    from rest.core.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 10, 28, 2, stem="cifar")
    split, spec = tiny_data.subsample(32).train, get_dataset_spec("colored_digits")
    exact = pgd.grad_norms(model, split, spec, 64, 0.7)
    low = pgd.grad_norms(model, split, spec, 64, 0.7, make_amp(precision, torch.device("cpu")))
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert torch.allclose(low, exact, rtol=5e-2)
