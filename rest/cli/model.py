"""The ``export-model`` and ``predict`` commands: a selected model in compact sparse form; its accuracy and speed."""

from __future__ import annotations

import argparse
from pathlib import Path

from rest.cli.common import pct
from rest.errors import UserError
from rest.settings import DATASET_NAMES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export-model", help="save a cell's selected best-epoch model in compact sparse form")
    p.add_argument("study", help="study name (under --storage) or path, or a 'train --out' directory")
    p.add_argument("--cell", default=None, help="DATASET:CONFLICT_PCT, e.g. colored_digits:1 (a study needs it)")
    p.add_argument(
        "--storage",
        default=None,
        help="directory or s3:// / gs:// URI holding studies (default $REST_TUNE_STORAGE or ./studies)",
    )
    p.add_argument("--out", type=Path, default=None, help="model file (default results/<study>/model-<cell>.pt)")
    p.set_defaults(handler=cmd_export_model)

    p = subparsers.add_parser(
        "predict", help="accuracy and throughput (images/s) of an exported model, dense or sparse engine"
    )
    p.add_argument("model", type=Path, help="model file written by export-model")
    p.add_argument("--dataset", default=None, help=f"dataset: {', '.join(DATASET_NAMES)} (default: the model's)")
    p.add_argument(
        "--conflict-pct", type=float, default=None, help="conflict ratio of the dataset (default: the model's)"
    )
    p.add_argument(
        "--data-root", default=None, help="root of an LfF-layout dataset (default: the model's, if it has one)"
    )
    p.add_argument(
        "--engine",
        default="dense",
        help="dense (the PyTorch model) or sparse (BN folded, sparse kernels "
        "below the measured crossover density; CPU) (default dense)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--split", default="test", help="test, valid or train (default test)")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads, at most this machine's CPUs (default: PyTorch's)"
    )
    p.set_defaults(handler=cmd_predict)


def cmd_export_model(args: argparse.Namespace) -> int:
    from rest.api import export_model

    model = export_model(args.study, args.cell, storage=args.storage, out=args.out)
    print(
        f"saved {model.source} (density {model.density:g}, epoch {model.epoch}) to {model.path} "
        f"({model.path.stat().st_size / 1e6:.2f} MB); load it with rest.load_model('{model.path}')"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import os

    import torch

    from rest.deploy.model_file import predict_file

    if args.threads is not None:
        cpus = os.cpu_count() or 1
        if not 1 <= args.threads <= cpus:  # far too many threads crash PyTorch's thread pool
            raise UserError(
                f"--threads {args.threads} is outside 1..{cpus}, the CPUs of this machine; give a count in that range"
            )
        torch.set_num_threads(args.threads)
    r = predict_file(
        args.model, args.engine, args.batch_size, args.split, args.dataset, args.conflict_pct, args.data_root
    )
    print(
        f"{args.model}: {r['dataset']} {r['conflict_pct']:g}% {r['split']} split, {r['samples']} images, "
        f"{r['engine']} engine" + (f" ({r['sparse_layers']} of {r['layers']} layers sparse)" if "layers" in r else "")
    )
    if "avg" in r:
        print(
            f"accuracy: average {pct(r['avg'])}%, worst-group {pct(r['worst'])}%, "
            f"conflicting {pct(r['conflict'])}% ({r['conflict_count']}), "
            f"aligned {pct(r['align'])}% ({r['align_count']})"
        )
    print(f"throughput: {r['images_per_s']:.0f} images/s (batch {r['batch_size']}, {r['threads']} threads)")
    return 0
