"""prepare-data: build LfF-layout datasets from the raw files a user has, and check any LfF tree.

Modules: ``raw`` (readers of the MNIST and CIFAR-10 files), ``build`` (planning,
rendering and the build pipeline), ``pool`` (worker processes that die with the
builder), ``atomic`` (a tree appears complete or not at all), ``check`` (the tree
checker). The names below are the package's public interface.
"""

from rest.core.prepare.atomic import atomic_dir
from rest.core.prepare.build import (
    DEFAULT_RATIOS,
    FORMAT_VERSION,
    MANIFEST,
    RECIPES,
    VALID_FRACTION,
    BuildSummary,
    Recipe,
    build,
    get_recipe,
    make_plan,
    parse_ratios,
    render_cifar10c,
    render_cmnist,
    render_rng,
)
from rest.core.prepare.check import PROBLEM_KINDS, Problem, TreeReport, check_tree, format_report
from rest.core.prepare.raw import download_hint, load_cifar10, load_mnist, read_cifar_batch, read_idx

__all__ = [
    "DEFAULT_RATIOS",
    "FORMAT_VERSION",
    "MANIFEST",
    "PROBLEM_KINDS",
    "RECIPES",
    "VALID_FRACTION",
    "BuildSummary",
    "Problem",
    "Recipe",
    "TreeReport",
    "atomic_dir",
    "build",
    "check_tree",
    "download_hint",
    "format_report",
    "get_recipe",
    "load_cifar10",
    "load_mnist",
    "make_plan",
    "parse_ratios",
    "read_cifar_batch",
    "read_idx",
    "render_cifar10c",
    "render_cmnist",
    "render_rng",
]
