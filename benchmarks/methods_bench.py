"""PGD and DCWP on the embedded colored_digits dataset: the issue's two figures.

1. PGD vs ERM at 5 % conflicting: the same seed, epochs, model and data; ERM is
   dense uniform sampling, PGD dense with ``reweight: pgd`` (its biased model trains
   ``--pgd-epochs`` epochs before). Reported: the selected epoch's (``best_*``) test
   conflicting and unbiased accuracy, and the last epoch's, for each seed.
2. DCWP at density 0.1: realised density of the trained network, per-layer active
   counts against the exact ERK targets, and the largest per-layer difference.

    .venv/bin/python benchmarks/methods_bench.py              # ~10 min on 2 busy cores
    .venv/bin/python benchmarks/methods_bench.py --quick      # smoke check

JSON goes to benchmarks/results/methods_bench.json (--quick: the temp directory
unless --out is given); a table to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(settings, data):
    from rest.core.train import Trainer

    start = time.perf_counter()
    trainer = Trainer(settings, data)
    records = [trainer.run_epoch() for _ in range(settings.epochs)]
    return records, time.perf_counter() - start, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs, one seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[41, 42])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--subsample", type=int, default=3000)
    parser.add_argument("--pgd-epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    import torch

    from rest.core.data import load_dataset
    from rest.settings import TrainSettings

    torch.set_num_threads(2)
    if args.quick:
        args.seeds, args.epochs, args.subsample = args.seeds[:1], 2, 600
    data = load_dataset("colored_digits", 5.0).subsample(args.subsample)
    base = TrainSettings(
        dataset="colored_digits",
        conflict_pct=5.0,
        model="cnn",
        epochs=args.epochs,
        batch_size=128,
        lr=0.01,
        schedule="none",
        subsample=0,
        precision="fp32",
        pgd_epochs=args.pgd_epochs,
    )
    out: dict = {
        "settings": {
            "epochs": args.epochs,
            "subsample": args.subsample,
            "pgd_epochs": args.pgd_epochs,
            "batch_size": 128,
            "lr": 0.01,
            "schedule": "none",
            "model": "cnn",
        },
        "pgd_vs_erm": [],
        "dcwp": {},
    }
    keys = ("best_test_conflict_acc", "best_test_unbiased_acc", "test_conflict_acc", "test_unbiased_acc")
    for seed in args.seeds:
        row = {"seed": seed}
        for name, change in (("erm", dict(reweight="none", density=1.0)), ("pgd", dict(reweight="pgd", density=1.0))):
            print(f"seed {seed}: {name}", file=sys.stderr)
            records, seconds, _ = run(base.replace(seed=seed, **change), data)
            row[name] = {k: records[-1][k] for k in keys} | {"seconds": seconds}
        row["gain_best_test_conflict_acc"] = row["pgd"]["best_test_conflict_acc"] - row["erm"]["best_test_conflict_acc"]
        out["pgd_vs_erm"].append(row)
    print("DCWP at density 0.1", file=sys.stderr)
    records, seconds, trainer = run(
        base.replace(seed=args.seeds[0], sparse="dcwp", density=0.1, reweight="jtt", lambda_upweight=10.0), data
    )
    layers = trainer.sparse.layer_counts()
    out["dcwp"] = {
        "requested_density": 0.1,
        "realised_density": records[-1]["density"],
        "layers": {n: {"active": a, "total": t, "target": trainer.sparse.counts[n]} for n, (a, t) in layers.items()},
        "max_layer_count_error": max(abs(a - trainer.sparse.counts[n]) for n, (a, _) in layers.items()),
        "flagged": int(trainer.dcwp.flagged.sum()),
        "train_samples": len(trainer.data.train),
        "flagged_conflicting": int((trainer.dcwp.flagged & trainer.data.train.conflicting).sum()),
        "conflicting": int(trainer.data.train.conflicting.sum()),
        **{k: records[-1][k] for k in keys},
        "seconds": seconds,
    }
    path = (
        args.out
        or (Path(tempfile.gettempdir()) if args.quick else ROOT / "benchmarks" / "results") / "methods_bench.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print("| seed | ERM conflicting (%) | PGD conflicting (%) | gain (points) | ERM unbiased (%) | PGD unbiased (%) |")
    print("|---|---|---|---|---|---|")
    for r in out["pgd_vs_erm"]:
        print(
            f"| {r['seed']} | {100 * r['erm']['best_test_conflict_acc']:.1f} | "
            f"{100 * r['pgd']['best_test_conflict_acc']:.1f} | "
            f"{100 * r['gain_best_test_conflict_acc']:+.1f} | {100 * r['erm']['best_test_unbiased_acc']:.1f} | "
            f"{100 * r['pgd']['best_test_unbiased_acc']:.1f} |"
        )
    d = out["dcwp"]
    print(
        f"\nDCWP: requested density 0.1, realised {d['realised_density']:.6f}, largest per-layer count error "
        f"{d['max_layer_count_error']} weights; flagged {d['flagged']} of {d['train_samples']} "
        f"({d['flagged_conflicting']} of {d['conflicting']} conflicting samples among them)"
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
