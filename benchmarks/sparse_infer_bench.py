"""CPU inference speed of exported sparse models: the dense engine against the sparse engine.

Two parts, in one process, on ``--threads`` threads (default 2):

1. Crossover per layer shape. For every distinct convolution / linear layer of the CNN
   (28 px) and ResNet-18 (32 px, CIFAR stem and REST's ImageNet stem), at batch sizes 1,
   16, 64 and 256, and densities from 0.01 to 0.3: the median time of the sparse kernel
   (``rest.deploy.infer.sparse_conv2d``, input already batch-innermost as between two sparse
   layers) against PyTorch's dense convolution of the same BN-folded weight. The
   crossover of a shape is the largest density up to which the sparse kernel is faster
   at every grid density. ``rest.deploy.infer.CROSSOVER`` stores the lowest crossover over the
   shapes for each batch size.
2. End to end: models with random weights masked by exact ERK masks at global
   densities 0.01, 0.02, 0.05, 0.1 and 1 and random BatchNorm statistics; images/s of
   the dense engine (the model as ``rest.load_model`` returns it), the sparse engine,
   and the sparse engine with every layer dense (BN folding alone), at batch 1 and 256.
   The engines are interleaved within every repeat (order rotated), medians over
   repeats; the largest |logit difference| between the engines is recorded.

    .venv/bin/python benchmarks/sparse_infer_bench.py            # full run (aimed at ~10 min on 2 quiet cores)
    .venv/bin/python benchmarks/sparse_infer_bench.py --quick    # smoke check, ~1 min, writes to the temp dir

Progress goes to stderr, markdown tables to stdout, JSON and a plot to benchmarks/results/
(sparse_infer.json, sparse_infer.png). The 1-minute load average is recorded after every
repeat: other processes on the machine make absolute numbers noisy; ratios within a
repeat are less affected.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rest.core.models import build_model  # noqa: E402
from rest.core.sparse import active_counts, erk_densities, maskable_weights  # noqa: E402
from rest.deploy.infer import CROSSOVER, CSRWeight, layer_plan, sparse_conv2d, sparse_engine  # noqa: E402

MODELS = {  # name: (model, image size, build kwargs)
    "cnn-28px": ("cnn", 28, {}),
    "resnet18-32px-cifar-stem": ("resnet18", 32, {"stem": "cifar"}),  # this project's default stem at 32 px
    "resnet18-32px-imagenet-stem": ("resnet18", 32, {"stem": "imagenet"}),  # REST's, 16x fewer FLOPs at 32 px
}
ALL_DENSE = ((1, -1.0),)  # a rule under which no layer runs sparse: the BN-folded dense model


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load1() -> float:
    return os.getloadavg()[0]


def masked_model(name: str, density: float, seed: int = 0) -> nn.Module:
    """A model with random weights, an exact ERK mask per layer and random BatchNorm statistics."""
    arch, size, kwargs = MODELS[name]
    torch.manual_seed(seed)
    model = build_model(arch, 10, size, **kwargs)
    weights = maskable_weights(model)
    shapes = {n: tuple(p.shape) for n, p in weights.items()}
    counts = active_counts(shapes, erk_densities(shapes, density))
    with torch.no_grad():
        for n, p in weights.items():
            keep = torch.zeros(p.numel(), dtype=torch.bool)
            keep[torch.randperm(p.numel())[: counts[n]]] = True
            p.mul_(keep.view(p.shape))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# ------------------------------------------------------------------ part 1


def layer_shapes(names: list[str]) -> list[dict]:
    """Distinct (input shape, weight shape, stride, padding) of every conv / linear layer, in model order."""
    seen, shapes = set(), []
    for name in names:
        arch, size, _ = MODELS[name]
        model = masked_model(name, 1.0)
        hooks = []

        def hook(m, inp, out, model_name=name):
            x = inp[0]
            if isinstance(m, nn.Linear):
                key = (x.shape[1], 1, 1, m.weight.shape[0], m.weight.shape[1], 1, 1, 0)
            else:
                key = (
                    x.shape[1],
                    x.shape[2],
                    x.shape[3],
                    *m.weight.shape[:2],
                    m.weight.shape[2],
                    m.stride[0],
                    m.padding[0],
                )
            if key not in seen:
                seen.add(key)
                shapes.append(
                    {
                        "model": model_name,
                        "c_in": key[0],
                        "h": key[1],
                        "w": key[2],
                        "c_out": key[3],
                        "kernel": key[5],
                        "stride": key[6],
                        "padding": key[7],
                        "linear": isinstance(m, nn.Linear),
                    }
                )

        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                hooks.append(m.register_forward_hook(hook))
        with torch.no_grad():
            model(torch.randn(1, 3, size, size))
        for h in hooks:
            h.remove()
    return shapes


def crossover_part(names: list[str], batches: list[int], densities: list[float], repeats: int) -> list[dict]:
    rows = []
    for shape in layer_shapes(names):
        k, s, p = shape["kernel"], shape["stride"], shape["padding"]
        for batch in batches:
            x = torch.randn(batch, shape["c_in"], shape["h"], shape["w"])
            x_chwn = x.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)  # as a sparse layer hands it on
            timings = []
            for d in densities:
                w = torch.randn(shape["c_out"], shape["c_in"], k, k)
                w = w * (torch.rand_like(w) < d)
                bias = torch.randn(shape["c_out"])
                csr = CSRWeight.from_weight(w)
                dense = partial(F.conv2d, x, w, bias, s, p)
                sparse = partial(sparse_conv2d, x_chwn, csr, bias, shape["c_out"], (k, k), (s, s), (p, p))
                dense(), sparse()
                t_dense, t_sparse = [], []
                for _ in range(repeats):
                    pair = timed(dense, 1), timed(sparse, 1)
                    t_dense += pair[0]
                    t_sparse += pair[1]
                timings.append(
                    {"density": d, "dense_s": statistics.median(t_dense), "sparse_s": statistics.median(t_sparse)}
                )
            cross = 0.0
            for t in timings:
                if t["sparse_s"] >= t["dense_s"]:
                    break
                cross = t["density"]
            rows.append({**shape, "batch": batch, "crossover": cross, "timings": timings})
            ups = ", ".join(f"{t['dense_s'] / t['sparse_s']:.2f}" for t in timings)
            log(
                f"  {shape['c_in']:>3}->{shape['c_out']:<3} k{k} s{s} {shape['h']:>2}px batch {batch:>3}: "
                f"crossover {cross:g} "
                f"(speed-up at the grid: {ups}) load {load1():.1f}"
            )
    return rows


def crossover_rule(rows: list[dict]) -> list[tuple[int, float]]:
    """Per measured batch size, the lowest crossover over the layer shapes."""
    return [(b, min(r["crossover"] for r in rows if r["batch"] == b)) for b in sorted({r["batch"] for r in rows})]


# ------------------------------------------------------------------ part 2


def end_to_end(names: list[str], densities: list[float], batches: list[int], repeats: int, single: int) -> list[dict]:
    rows = []
    for name in names:
        arch, size, _ = MODELS[name]
        for d in densities:
            model = masked_model(name, d)
            engines = {
                "dense": model,
                "sparse": sparse_engine(model),
                "dense, BN folded": sparse_engine(model, ALL_DENSE),
            }
            for batch in batches:
                x = torch.randn(batch if batch > 1 else single, 3, size, size)
                with torch.inference_mode():
                    logits = {k: e(x[:batch]) for k, e in engines.items()}  # warm-up (kernel load) and equality
                    diff = float((logits["dense"] - logits["sparse"]).abs().max())
                    same_argmax = bool(torch.equal(logits["dense"].argmax(1), logits["sparse"].argmax(1)))

                    def run(engine, batch=batch, x=x):
                        if batch == 1:
                            for i in range(len(x)):
                                engine(x[i : i + 1])
                        else:
                            engine(x)

                    times = {k: [] for k in engines}
                    loads = []
                    order = list(engines)
                    for r in range(repeats):
                        for k in order[r % len(order) :] + order[: r % len(order)]:
                            times[k] += timed(partial(run, engines[k]), 1)
                        loads.append(load1())
                n_images = len(x)
                speed = {k: n_images / statistics.median(v) for k, v in times.items()}
                plan = layer_plan(engines["sparse"], batch)
                row = {
                    "model": name,
                    "density": d,
                    "batch": batch,
                    "images_per_s": speed,
                    "speedup": speed["sparse"] / speed["dense"],
                    "speedup_bn_folding_alone": speed["dense, BN folded"] / speed["dense"],
                    "sparse_layers": sum(p["kernel"] == "sparse" for p in plan),
                    "layers": len(plan),
                    "max_abs_logit_diff": diff,
                    "same_argmax": same_argmax,
                    "times_s": times,
                    "load1": loads,
                }
                rows.append(row)
                log(
                    f"  {name} density {d:g} batch {batch}: "
                    f"dense {speed['dense']:.0f}/s, sparse {speed['sparse']:.0f}/s "
                    f"(x{row['speedup']:.2f}; BN folding alone x{row['speedup_bn_folding_alone']:.2f}), "
                    f"{row['sparse_layers']}/{row['layers']} layers sparse, "
                    f"max |dlogit| {diff:.1e}, load {loads[-1]:.1f}"
                )
    return rows


# ------------------------------------------------------------------ output


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | batch | ERK density | dense engine (img/s) | sparse engine (img/s) | speed-up | BN folding alone "
        "| layers sparse | max abs logit diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["images_per_s"]
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['density']:g} | {s['dense']:.0f} | {s['sparse']:.0f} | "
            f"{r['speedup']:.2f}x | {r['speedup_bn_folding_alone']:.2f}x | {r['sparse_layers']}/{r['layers']} | "
            f"{r['max_abs_logit_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def crossover_markdown(rows: list[dict]) -> str:
    batches = sorted({r["batch"] for r in rows})
    lines = [
        "| layer (c_in -> c_out, kernel, stride, input px) | first seen in | "
        + " | ".join(f"batch {b}" for b in batches)
        + " |",
        "|---|---|" + "---:|" * len(batches),
    ]
    keys = list(dict.fromkeys((r["c_in"], r["c_out"], r["kernel"], r["stride"], r["h"], r["model"]) for r in rows))
    for key in keys:
        cells = [
            next(
                r["crossover"]
                for r in rows
                if (r["c_in"], r["c_out"], r["kernel"], r["stride"], r["h"], r["model"]) == key and r["batch"] == b
            )
            for b in batches
        ]
        lines.append(
            f"| {key[0]} -> {key[1]}, {key[2]}x{key[2]}, s{key[3]}, {key[4]} px | {key[5]} | "
            + " | ".join(f"{c:g}" for c in cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for name in dict.fromkeys(r["model"] for r in rows):
            sub = sorted((r for r in rows if r["model"] == name and r["batch"] == batch), key=lambda r: r["density"])
            ax.plot([r["density"] for r in sub], [r["speedup"] for r in sub], marker="o", label=name)
        ax.axhline(1.0, color="grey", linewidth=1, linestyle="--")
        ax.set_xscale("log")
        ax.set_xlabel("ERK density (fraction of weights kept)")
        ax.set_ylabel("sparse engine / dense engine (images/s)")
        ax.set_title(f"batch {batch}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"CPU inference speed-up of the sparse engine ({torch.get_num_threads()} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="smoke check: fewer shapes, densities and repeats, small batch"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=None, help="end-to-end repeats (default 5; quick 2)")
    ap.add_argument("--skip-crossover", action="store_true", help="only the end-to-end part")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    ap.add_argument(
        "--batches", default=None, help="end-to-end batch sizes, comma-separated (default 1,256; quick 1,32)"
    )
    ap.add_argument(
        "--single", type=int, default=None, help="images timed one by one at batch 1 (default 64; quick 16)"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="output directory (default benchmarks/results; quick: temp dir)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or (
        Path(tempfile.gettempdir()) / "sparse_infer_quick" if args.quick else ROOT / "benchmarks" / "results"
    )
    out.mkdir(parents=True, exist_ok=True)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        ap.error(f"unknown model {unknown[0]}; choose from {', '.join(MODELS)}")
    if args.quick:
        big_batch, repeats, cross_repeats = 32, args.repeats or 2, 1
        densities, cross_densities = [0.02, 0.1, 1.0], [0.02, 0.1, 0.3]
    else:
        big_batch, repeats, cross_repeats = 256, args.repeats or 5, 3
        densities, cross_densities = [0.01, 0.02, 0.05, 0.1, 1.0], [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3]
    started = time.time()
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
        "load1_start": load1(),
        "crossover_in_code": [list(r) for r in CROSSOVER],
    }
    if not args.skip_crossover:
        log("part 1: crossover density per layer shape")
        cross = crossover_part(
            names, [1, 16] + ([64] if big_batch > 64 else []) + [big_batch], cross_densities, cross_repeats
        )
        result["crossover"] = cross
        result["crossover_rule_measured"] = crossover_rule(cross)
    log("part 2: end-to-end images/s")
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [1, big_batch]
    rows = end_to_end(names, densities, batches, repeats, single=args.single or (16 if args.quick else 64))
    result["end_to_end"] = rows
    result["wall_seconds"] = time.time() - started
    result["load1_end"] = load1()
    (out / "sparse_infer.json").write_text(json.dumps(result, indent=1))
    plot(rows, out / "sparse_infer.png")
    print(markdown(rows))
    if "crossover" in result:
        print(crossover_markdown(result["crossover"]))
        print(
            f"measured crossover rule (batch, density): {result['crossover_rule_measured']}; "
            f"in rest/deploy/infer.py: {list(CROSSOVER)}"
        )
    print(
        f"wall time {result['wall_seconds'] / 60:.1f} min, 1-min load average {result['load1_start']:.1f} at start, "
        f"{result['load1_end']:.1f} at end; written to {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
