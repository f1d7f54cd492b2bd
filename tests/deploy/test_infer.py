"""Fast sparse inference: BN folding, the sparse kernel against PyTorch's, the predict command."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import cli

ALL_SPARSE = ((1, 1.0),)  # a rule that runs every layer on the sparse kernel, whatever its density


def _randomise(model: nn.Module, density: float, seed: int) -> nn.Module:
    """ERK-masked random weights and non-trivial BatchNorm statistics: what a trained sparse model looks like."""
    from rest.core.sparse import erk_densities, maskable_weights

    gen = torch.Generator().manual_seed(seed)
    weights = maskable_weights(model)
    densities = erk_densities({n: tuple(p.shape) for n, p in weights.items()}, density)
    with torch.no_grad():
        for name, p in weights.items():
            p.mul_(torch.rand(p.shape, generator=gen) < densities[name])
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.3, 0.3, generator=gen)
    return model.eval()


def test_fold_bn_is_exact_and_keeps_zeros():
    from rest.deploy.infer import fold_bn

    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.3)
    bn = _randomise(nn.Sequential(nn.BatchNorm2d(7)), 1.0, 0)[0]
    x = torch.randn(4, 5, 6, 6)
    weight, bias = fold_bn(conv.weight, conv.bias, bn)
    with torch.no_grad():
        assert torch.allclose(F.conv2d(x, weight, bias, padding=1), bn(conv(x)), atol=1e-5)
    assert torch.equal(weight == 0, conv.weight == 0)


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (4, 2, 1), (7, 2, 3)])
def test_sparse_kernel_equals_conv2d(kernel, stride, padding, batch):
    from rest.deploy.infer import CSRWeight, sparse_conv2d

    gen = torch.Generator().manual_seed(kernel * 10 + stride)
    w = torch.randn(6, 4, kernel, kernel, generator=gen) * (torch.rand(6, 4, kernel, kernel, generator=gen) < 0.3)
    w[2] = 0  # an output channel with no weight left: its output is the bias
    bias = torch.randn(6, generator=gen)
    x = torch.randn(batch, 4, 9, 9, generator=gen)
    got = sparse_conv2d(x, CSRWeight.from_weight(w), bias, 6, (kernel, kernel), (stride, stride), (padding, padding))
    assert torch.allclose(got, F.conv2d(x, w, bias, stride, padding), atol=1e-5)


@pytest.mark.parametrize(
    "name,kwargs",
    [("cnn", {}), ("resnet18", {"width": 8, "stem": "cifar"}), ("resnet18", {"width": 8, "stem": "imagenet"})],
)
def test_sparse_engine_predicts_as_the_dense_model(name, kwargs):
    from rest.core.models import build_model
    from rest.deploy.infer import layer_plan, sparse_engine

    torch.manual_seed(0)
    size = 28 if name == "cnn" else 32
    model = _randomise(build_model(name, 10, size, **kwargs), 0.05, 1)
    engine = sparse_engine(model, ALL_SPARSE)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in engine.modules())
    assert all(p["kernel"] == "sparse" for p in layer_plan(engine, 1))
    x = torch.randn(33, 3, size, size)
    with torch.no_grad():
        dense, sparse = model(x), engine(x)
        assert (dense - sparse).abs().max() <= 1e-4 * max(1.0, dense.abs().max())
        assert torch.equal(dense.argmax(1), sparse.argmax(1))
        assert torch.allclose(engine(x[:1]), dense[:1], atol=1e-4)  # batch 1: dense kernels by the default rule too
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the engine is a copy: the model is unchanged"


def test_crossover_rule_picks_dense_above_the_crossover():
    from rest.deploy.infer import CROSSOVER, SparseConv2d, crossover

    rule = ((1, 0.0), (16, 0.2))
    assert [crossover(b, rule) for b in (1, 15, 16, 256)] == [0.0, 0.0, 0.2, 0.2]
    assert crossover(10**6) == max(d for _, d in CROSSOVER)
    w = torch.zeros(8, 8, 3, 3)
    w.view(-1)[::10] = 1.0  # density 0.1
    layer = SparseConv2d(w, None, (1, 1), (1, 1), rule)
    assert (layer.kernel_for(1), layer.kernel_for(256)) == ("dense", "sparse")
    w.view(-1)[::3] = 1.0  # density above 0.2: dense at every batch size
    assert SparseConv2d(w, None, (1, 1), (1, 1), rule).kernel_for(256) == "dense"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, tiny_data):
    """A cnn trained one epoch at density 0.05 on tiny colored digits, written as export-model writes it."""
    from rest.core.train import Trainer
    from rest.deploy.model_file import save_sparse_model
    from rest.settings import TrainSettings

    settings = TrainSettings(
        dataset="colored_digits",
        conflict_pct=5.0,
        epochs=1,
        batch_size=64,
        eval_batch_size=256,
        density=0.05,
        update_frequency=2,
        seed=3,
    )
    trainer = Trainer(settings, data=tiny_data)
    trainer.run_epoch()
    return save_sparse_model(trainer.state_dict(), tmp_path_factory.mktemp("model") / "m.pt")


def test_loaded_sparse_engine_matches_on_the_whole_test_split(model_file):
    import rest
    from rest.core.data import get_dataset_spec, load_dataset
    from rest.core.train import to_input
    from rest.deploy.model_file import ModelFileError, predict_file

    dense, sparse = rest.load_model(model_file), rest.load_model(model_file, engine="sparse")
    x = to_input(load_dataset("colored_digits", 5.0).test.images, get_dataset_spec("colored_digits"))
    with torch.no_grad():
        a = torch.cat([dense(x[i : i + 256]) for i in range(0, len(x), 256)])
        b = torch.cat([sparse(x[i : i + 256]) for i in range(0, len(x), 256)])
    assert (a - b).abs().max() <= 1e-4 and torch.equal(a.argmax(1), b.argmax(1))
    with pytest.raises(ModelFileError, match="unknown engine 'fast'; choose from dense, sparse"):
        rest.load_model(model_file, engine="fast")
    with pytest.raises(
        ModelFileError, match="none.pt does not exist; pass a file written by 'tune_search.py export-model'"
    ):
        predict_file(model_file.parent / "none.pt")


def test_load_model_imports_neither_pandas_nor_ray(model_file):
    """The deploy layer stands alone: a fresh ``import rest; rest.load_model(path)`` (either engine) loads
    the foundation, torch and rest.core only, never the study reader (pandas) or Ray."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import json, sys, rest\n"
        f"dense, sparse = rest.load_model({str(model_file)!r}), rest.load_model({str(model_file)!r}, engine='sparse')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'ray'))))\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == []


def test_predict_command_prints_accuracy_and_throughput(model_file, tmp_path):
    import rest
    from rest.core.data import get_dataset_spec, load_dataset
    from rest.core.train import evaluate

    test = load_dataset("colored_digits", 5.0).test
    acc = evaluate(rest.load_model(model_file), test, get_dataset_spec("colored_digits"), 256)
    out = cli("predict", str(model_file), "--engine", "sparse", "--batch-size", "200", "--threads", "1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "colored_digits 5% test split, 1000 images, sparse engine (" in lines[0] and "layers sparse)" in lines[0]
    assert lines[1] == (
        f"accuracy: average {100 * acc['avg']:5.1f}%, worst-group {100 * acc['worst']:5.1f}%, "
        f"conflicting {100 * acc['conflict']:5.1f}% ({acc['conflict_count']}), "
        f"aligned {100 * acc['align']:5.1f}% ({acc['align_count']})"
    )
    assert lines[2].startswith("throughput: ") and lines[2].endswith("images/s (batch 200, 1 threads)")
    assert float(lines[2].split()[1]) > 0

    (tmp_path / "notes.pt").write_text("not a model")
    bad = cli("predict", str(tmp_path / "notes.pt"), "--engine", "sparse")
    assert bad.returncode == 2 and "notes.pt is not a plain rest-tune model file" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-size", "0"], "--batch-size 0 must be at least 1"),
        (["--batch-size", "-5"], "--batch-size -5 must be at least 1"),
        (["--batch-size", "nan"], "argument --batch-size: invalid int value: 'nan'"),
        (["--batch-size", "inf"], "argument --batch-size: invalid int value: 'inf'"),
        (["--threads", "0"], "--threads 0 is outside 1.."),
        (["--threads", "-2"], "--threads -2 is outside 1.."),
        (["--threads", "100000"], "--threads 100000 is outside 1.."),  # PyTorch's thread pool segfaulted on it
        (["--threads", "nan"], "argument --threads: invalid int value: 'nan'"),
        (["--conflict-pct", "-1"], "--conflict-pct -1 is outside (0, 100)"),
        (["--conflict-pct", "0"], "--conflict-pct 0 is outside (0, 100)"),
        (["--conflict-pct", "100"], "--conflict-pct 100 is outside (0, 100)"),
        (["--conflict-pct", "250"], "--conflict-pct 250 is outside (0, 100)"),
        (["--conflict-pct", "nan"], "--conflict-pct nan is outside (0, 100)"),
        (["--conflict-pct", "inf"], "--conflict-pct inf is outside (0, 100)"),
        (["--conflict-pct", "abc"], "argument --conflict-pct: invalid float value: 'abc'"),
        (["--split", "nope"], "unknown split 'nope'; choose from train, valid, test"),
        (["--engine", "fast"], "unknown engine 'fast'; choose from dense, sparse"),
        (["--dataset", "nope"], "unknown dataset 'nope'; choose from"),
    ],
)
def test_every_bad_predict_flag_is_one_line_exit_2(model_file, capsys, flags, message):
    """In-process, so any exception other than the CLI's one-line exit fails the test with its traceback."""
    from rest.cli.main import main

    try:
        status = main(["-q", "predict", str(model_file), *flags])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
