"""The export's plot: test accuracy against density, per cell, from the search phase."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rest.report.results import StudyResults, search_configs


def accuracy_vs_density(
    study: StudyResults, density: pd.DataFrame, best: pd.DataFrame, path: Path, ranking: str
) -> None:
    """Grid studies: one line per cell through the best config of each density. Sampled
    densities: every search config as a point, the selected config of each cell a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    spec = study.spec
    cells = spec.compare_within
    sampled = "density" in spec.sampled_keys()
    points = search_configs(study) if sampled else density
    selected = best[best["row"] == "REST (selected)"] if "row" in best else best.iloc[:0]
    styles = {"ERM (dense)": "--", "dense reweighted": ":"}
    for ax, metric, title in zip(
        axes,
        ("best_test_worst_group_acc", "best_test_unbiased_acc"),
        ("test worst-group accuracy", "test unbiased accuracy"),
    ):
        for cell, rows in points.groupby(cells, sort=True):
            cell = cell if isinstance(cell, tuple) else (cell,)
            label = ", ".join(f"{v:g}%" if k == "conflict_pct" else str(v) for k, v in zip(cells, cell))
            rows = rows.sort_values("density")
            if sampled:
                color = ax.scatter(rows["density"], 100 * rows[metric], s=25, label=label).get_facecolor()[0]
                mine = selected[[tuple(r[k] for k in cells) == cell for _, r in selected.iterrows()]]
                for _, sel in mine.iterrows():  # the selected config's search point(s)
                    hit = rows[np.isclose(rows["density"], sel["density"])]
                    ax.scatter(
                        hit["density"], 100 * hit[metric], marker="*", s=220, color=color, edgecolors="black", zorder=4
                    )
            else:
                err = 100 * rows[f"{metric}_se"].fillna(0.0)
                color = ax.errorbar(rows["density"], 100 * rows[metric], yerr=err, marker="o", capsize=3, label=label)[
                    0
                ].get_color()
            cut = rows[rows["stopped_early"] > 0]  # ASHA stopped these before the last epoch: not comparable
            ax.scatter(
                cut["density"],
                100 * cut[metric],
                s=90 if not sampled else 40,
                facecolors="white",
                edgecolors=color,
                zorder=3,
            )
            for _, b in best[best["status"] == "baseline"].iterrows():
                if tuple(b[k] for k in cells) == tuple(cell):
                    ax.axhline(100 * b[metric], color=color, linestyle=styles.get(b["row"], "-."), linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # crowded labels on sub-decade spans
        ax.set_xlabel("density (fraction of weights kept)")
        ax.set_ylabel(f"{title} (%)")
        ax.grid(alpha=0.3)
    how_read = "star: selected config" if sampled else "hollow: stopped early by ASHA"
    axes[0].legend(
        title=f"cell (dashed: dense ERM; dotted: dense reweighted;\n{how_read}"
        f"{'; hollow: stopped early by ASHA' if sampled else ''})",
        fontsize=8,
        title_fontsize=8,
    )
    tag = "" if ranking == "val" else " — ORACLE selection on test"
    what = "every sampled config" if sampled else "best config per density"
    fig.suptitle(f"study {study.name}: search phase, {what}{tag}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
