"""Plain helpers shared by test files (fixtures live in conftest.py; no test file imports another).

Importable as ``from helpers import ...`` (and ``from conftest import ...``) from every test file:
pytest's default "prepend" import mode puts tests/ on sys.path, as the directory of tests/conftest.py
and as the root of the tests/<layer>/ packages (each has an ``__init__.py``, so a test file is imported
as ``core.test_train`` and two layers may hold the same basename). Not ``--import-mode=importlib``:
it would import conftest.py a second time under another name, and conftest picks a free S3 port on import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT

SMOKE = ROOT / "search_spaces" / "smoke.yaml"
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN = ROOT / "tests" / "golden"

# The study file of the issue (s4.yaml) on a smaller subsample, so the suite stays fast.
S4 = {
    "name": "s4",
    "dataset": "colored_digits",
    "train": {
        "epochs": 4,
        "batch_size": 64,
        "subsample": 400,
        "conflict_pct": 1,
        "sparse": "rigl",
        "reweight": "oracle",
    },
    "search": {"density": {"grid": [0.05, 1.0]}, "lambda_upweight": {"grid": [10, 50]}},
    "scheduler": {"type": "asha", "grace_period": 4, "reduction_factor": 2},
    "confirm": {"top_k": 1, "seeds": [41], "baseline": False, "epochs": 2},
}


def write_s4(path: Path, **changes) -> Path:
    space = json.loads(json.dumps(S4))
    for key, value in changes.items():
        space[key] = value
    path.write_text(yaml.safe_dump(space))
    return path


def write_space(path: Path, **changes) -> Path:
    """The smoke study with changes: mappings are merged, except `search`, which is replaced; None writes null."""
    space = yaml.safe_load(SMOKE.read_text())
    for key, value in changes.items():
        if value is None:
            space[key] = None  # e.g. confirm: null, no confirm phase
        elif key != "search" and isinstance(value, dict) and isinstance(space.get(key), dict):
            space[key].update(value)
        else:
            space[key] = value
    path.write_text(yaml.safe_dump(space))
    return path


def driver(args, env_extra=None):
    """tune_search.py started in a real subprocess (not waited for), as a user's driver."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tune_search.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def checkpoint_epochs(experiment: Path) -> dict[str, int]:
    """trial dir -> epochs held by its newest complete checkpoint (history.json length)."""
    out = {}
    for trial in experiment.glob("trial_*"):
        for ckpt in sorted(trial.glob("checkpoint_*"), reverse=True):
            try:
                out[trial.name] = len(json.loads((ckpt / "history.json").read_text()))
                break
            except (OSError, ValueError):
                continue
    return out


def results(experiment: Path) -> dict[str, list[dict]]:
    """trial dir name -> every record it reported, in order (read from Ray's result.json)."""
    out = {}
    for trial in sorted(experiment.glob("trial_*")):
        file = trial / "result.json"
        out[trial.name] = [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []
    return out


def tensorboard_scalars(directory):
    """(tag, step) of every scalar in the TensorBoard event files below `directory` (TFRecord framing)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(directory.glob("**/events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = Event.FromString(data[i + 12 : i + 12 + length])
            out += [(v.tag, event.step) for v in event.summary.value]
            i += 12 + length + 4
    return out


def file_size_limit(limit: int):
    """preexec_fn: files the process writes may not grow past `limit` bytes; writes past it fail with EFBIG."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def biased_split(n: int, n_conflict: int):
    """A training split of `n` blank images, classes in turn; the first `n_conflict` have another bias label."""
    import torch

    from rest.core.data import Split

    y = torch.arange(n) % 10
    b = y.clone()
    b[:n_conflict] = (y[:n_conflict] + 1) % 10
    return Split(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), y, b)


def without_bias_labels(data):
    """`data` (a BiasedData) with its training split's bias labels removed, as PGD and DCWP train."""
    from rest.core.data import BiasedData

    return BiasedData(data.name, data.conflict_pct, data.train.without_bias(), data.valid, data.test)


# A methods study (search_spaces/methods.yaml) read back without running it: made-up trials.
METHODS = ["ERM", "JTT", "PGD", "DCWP", "oracle (dense)", "REST"]


def method_record(epoch, val_worst, test_conflict):
    """One epoch's record with the given validation worst-group and test conflicting accuracy."""
    return {
        "epoch": epoch,
        "val_worst_group_acc": val_worst,
        "val_avg_acc": 0.9,
        "val_loss": 0.5,
        "val_conflict_acc": val_worst,
        "val_align_acc": 0.99,
        "val_conflict_count": 50,
        "val_align_count": 950,
        "test_worst_group_acc": test_conflict,
        "test_unbiased_acc": test_conflict + 0.05,
        "test_conflict_acc": test_conflict,
        "test_align_acc": 0.99,
        "nonzero_params": 10,
        "dense_params": 100,
        "inference_flops": 20,
        "dense_inference_flops": 200,
        "epoch_seconds": 1.0,
    }


def method_trials(spec, phase, score):
    """One trial per config of the study's grid (confirm: per config and seed), scored by `score(config)`."""
    from rest.study.space import method_configs
    from rest.study.trials import Trial

    trials = []
    for i, cfg in enumerate(method_configs(spec)):
        for seed in [cfg["seed"]] if phase == "search" else spec.confirm.seeds:
            config = {**cfg, "seed": seed}
            if phase == "confirm":
                config["extra"] = {**cfg["extra"], "role": "top1"}
            val, test = score(config)
            trials.append(
                Trial(
                    phase,
                    f"{phase}{i}_{seed}",
                    "TERMINATED",
                    config,
                    0,
                    [method_record(e, val, test) for e in range(1, spec.max_epochs + 1)],
                )
            )
    return trials
