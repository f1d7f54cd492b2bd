"""Check any tree in the LfF layout the folder loader reads (``rest/core/data/folder.py``),
BFFHQ included: what prepare-data check reports.

Every problem found is listed with its kind (``PROBLEM_KINDS``); a tree with none
is valid. Images are decoded (in worker processes for big trees) so unreadable
files and the same picture in two splits are found by pixels, not by bytes.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from rest.core.data import get_dataset_spec
from rest.core.data.base import DataError
from rest.core.data.folder import IMAGE_SUFFIXES, parse_labels
from rest.core.data.protocol import conflict_quota
from rest.core.prepare.pool import Progress, default_workers, exit_if_orphaned, run_tasks
from rest.tables import float_cell, markdown


@dataclass(frozen=True)
class Problem:
    kind: str
    path: str
    detail: str


# kind -> what it means (also the order of the summary line)
PROBLEM_KINDS = {
    "missing split": "a split the loader needs has no folder or no images",
    "malformed name": "a file name is not <id>_<y>_<b>.<ext>, or a folder name is not <pct>pct",
    "unreadable image": "Pillow cannot decode the file",
    "label out of range": "y or b is not a class of the dataset",
    "wrong group": "an align/ file has y != b, or a conflict/ file has y == b",
    "wrong class folder": "a file sits in a numbered folder other than its y",
    "duplicate across splits": "the same pixels appear in two splits of one ratio",
    "conflict ratio": "the conflicting share of a <pct>pct training set is far from pct",
}


@dataclass(frozen=True)
class Folder:
    """One image folder of the tree, and where the loader puts it."""

    path: Path
    label: str  # '5pct/align', 'test', ...
    split: str  # train / valid / test
    group: str | None  # 'align' / 'conflict' for training folders


@dataclass
class Entry:
    folder: Folder
    path: Path
    y: int
    b: int
    digest: str | None = None  # of the decoded pixels; None if unreadable
    size: tuple[int, int] | None = None
    error: str = ""


@dataclass
class TreeReport:
    root: Path
    rows: list[dict] = field(default_factory=list)  # one per (split folder, group)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    images: int = 0
    num_classes: int = 0

    def counts_by_kind(self) -> dict[str, int]:
        counts = Counter(p.kind for p in self.problems)
        return {k: counts[k] for k in PROBLEM_KINDS if counts[k]}

    def summary(self) -> str:
        if not self.problems:
            return f"{self.root}: {self.images} images, no problems"
        parts = ", ".join(f"{n} {kind}" for kind, n in self.counts_by_kind().items())
        n = len(self.problems)
        return f"check found {n} problem{'s' if n > 1 else ''} in {self.root}: {parts}"


def _pct_value(name: str) -> float | None:
    try:
        return float(name[: -len("pct")])
    except ValueError:
        return None


TOP_FOLDERS = {"test", "valid"}
PCT_FOLDERS = {"align", "conflict", "valid"}


def _ignored_folders(root: Path) -> list[str]:
    """Folders the loader never reads: often a tree unpacked one level too deep or too high."""
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in TOP_FOLDERS and not p.name.endswith("pct")
    ]
    found += [
        p for d in root.glob("*pct") if d.is_dir() for p in d.iterdir() if p.is_dir() and p.name not in PCT_FOLDERS
    ]
    return [f"{p}/: not part of the LfF layout, ignored by the loader" for p in sorted(found)]


def discover(root: Path) -> tuple[list[tuple[str, dict[str, list[Folder]]]], list[Problem]]:
    """The tree's ratios, each as {split: folders}, as the folder loader would read them."""
    problems = []
    test = Folder(root / "test", "test", "test", None)
    shared_valid = Folder(root / "valid", "valid", "valid", None) if (root / "valid").is_dir() else None
    ratios = []
    by_value = lambda p: (_pct_value(p.name) is None, _pct_value(p.name) or 0.0, p.name)  # noqa: E731
    for pct_dir in sorted((p for p in root.glob("*pct") if p.is_dir()), key=by_value):
        if _pct_value(pct_dir.name) is None:
            problems.append(Problem("malformed name", str(pct_dir), "folder name is not <number>pct"))
            continue
        name = pct_dir.name
        train = [Folder(pct_dir / g, f"{name}/{g}", "train", g) for g in ("align", "conflict")]
        valid = (
            Folder(pct_dir / "valid", f"{name}/valid", "valid", None) if (pct_dir / "valid").is_dir() else shared_valid
        )
        if not train[0].path.is_dir():  # a missing conflict/ is judged by the conflict-ratio check
            problems.append(Problem("missing split", str(train[0].path), "no such folder"))
        if valid is None:
            problems.append(
                Problem("missing split", str(pct_dir / "valid"), f"no {name}/valid/ and no valid/ at the root")
            )
        ratios.append(
            (name, {"train": [f for f in train if f.path.is_dir()], "valid": [valid] if valid else [], "test": [test]})
        )
    if not ratios:
        problems.append(Problem("missing split", str(root), "no <pct>pct folder (e.g. 1pct/align, 1pct/conflict)"))
    if not test.path.is_dir():
        problems.append(Problem("missing split", str(test.path), "no such folder"))
    return ratios, problems


def _hash_image(path: str) -> tuple[str, str | None, tuple[int, int] | None, str]:
    """(path, digest of the decoded RGB pixels, size, error). Pixels, not file bytes, so
    a copy saved again (other compression, other format) still matches."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            digest = hashlib.sha1(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
            return path, digest, rgb.size, ""
    except Exception as exc:  # any decoder failure means the same thing: unreadable
        return path, None, None, f"{exc.__class__.__name__}: {exc}"


def _hash_many(paths: list[str]) -> tuple[int, list]:
    exit_if_orphaned()
    results = [_hash_image(p) for p in paths]
    return len(paths), results


def _check_names(folder: Folder, num_classes: int | None) -> tuple[list[Entry], list[Problem], list[str]]:
    entries, problems, warnings = [], [], []
    for path in sorted(folder.path.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            warnings.append(f"{path}: not an image, ignored by the loader")
            continue
        try:
            y, b = parse_labels(path)
        except DataError:
            problems.append(Problem("malformed name", str(path), "expected <id>_<y>_<b>.png"))
            continue
        if num_classes is not None and max(y, b) >= num_classes:
            problems.append(Problem("label out of range", str(path), f"y={y}, b={b}; classes are 0..{num_classes - 1}"))
        if (folder.group == "align" and y != b) or (folder.group == "conflict" and y == b):
            problems.append(Problem("wrong group", str(path), f"y={y}, b={b} in {folder.group}/"))
        if path.parent != folder.path and path.parent.name.isdigit() and int(path.parent.name) != y:
            problems.append(Problem("wrong class folder", str(path), f"y={y} in folder {path.parent.name}/"))
        entries.append(Entry(folder, path, y, b))
    return entries, problems, warnings


def ratio_is_plausible(actual: float, nominal: float) -> bool:
    """Published trees (DisEnt's, drawn per sample) drift a little from their folder's
    name; a 20 % relative tolerance accepts them and still tells 0.5pct from 1pct."""
    return abs(actual - nominal) <= 0.2 * nominal + 0.02


def _ratio_problem(train: list[Entry], nominal: float) -> str | None:
    """Why a <pct>pct training set does not hold about pct % conflicting samples, or None.

    Exact per-class quotas (what prepare-data writes) always pass, even when rounding
    moves small classes far from pct (54 images at 0.5 % give 0 conflicting).
    """
    if not train:
        return None
    sizes = Counter(e.y for e in train)
    conflicting = Counter(e.y for e in train if e.y != e.b)
    if all(conflicting[c] == conflict_quota(n, nominal) for c, n in sizes.items()):
        return None
    actual = 100.0 * sum(conflicting.values()) / len(train)
    if ratio_is_plausible(actual, nominal):
        return None
    return f"{actual:.2f}% of {len(train)} training images conflict, expected about {nominal:g}%"


def _duplicates(ratios: list[tuple[str, dict[str, list[Folder]]]], entries: dict[Path, list[Entry]]) -> list[Problem]:
    problems, seen_pairs = [], set()
    for _, splits in ratios:
        first: dict[str, tuple[str, Path]] = {}
        for split, folders in splits.items():
            for folder in folders:
                for e in entries.get(folder.path, []):
                    if e.digest is None:
                        continue
                    if e.digest in first and first[e.digest][0] != split:
                        pair = (first[e.digest][1], e.path)
                        if pair not in seen_pairs:  # valid/ and test/ are shared by every ratio
                            seen_pairs.add(pair)
                            problems.append(
                                Problem("duplicate across splits", str(e.path), f"same pixels as {pair[0]}")
                            )
                    first.setdefault(e.digest, (split, e.path))
    return problems


def _rows(ratios, entries: dict[Path, list[Entry]], num_classes: int) -> list[dict]:
    """Per split and group (by labels: y == b or not), images and images per class.
    Folders shared by every ratio (test/, a root valid/) come last, once."""
    own, shared = {}, {}
    for name, splits in ratios:
        for split, folders in splits.items():
            if split == "train":
                own[f"{name}/train"] = folders
            elif folders and folders[0].label.startswith(f"{name}/"):
                own[folders[0].label] = folders
            elif folders:
                shared[folders[0].label] = folders
    rows = []
    for label, folders in {**own, **shared}.items():
        members = [e for f in folders for e in entries.get(f.path, [])]
        for group, keep in (("align", lambda e: e.y == e.b), ("conflict", lambda e: e.y != e.b)):
            chosen = [e for e in members if keep(e)]
            per_class = Counter(e.y for e in chosen)
            rows.append(
                {
                    "split": label,
                    "group": group,
                    "images": len(chosen),
                    "share%": 100.0 * len(chosen) / len(members) if members else float("nan"),
                    **{str(c): per_class[c] for c in range(num_classes)},
                }
            )
    return rows


def check_tree(
    root: Path, dataset: str | None = None, workers: int | None = None, progress: Progress | None = None
) -> TreeReport:
    """Validate an LfF-layout tree; the report lists every problem found (none: valid)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; pass the root of an LfF-layout dataset")
    spec = None
    if dataset is not None:
        spec = get_dataset_spec(dataset)
        if not spec.needs_root:
            raise DataError(f"{dataset} is embedded, not a folder dataset; choose from cmnist, cifar10c, bffhq")
    report = TreeReport(root)
    ratios, report.problems = discover(root)
    report.warnings += _ignored_folders(root)
    folders = {f.path: f for _, splits in ratios for fs in splits.values() for f in fs if f.path.is_dir()}
    entries: dict[Path, list[Entry]] = {}
    for path, folder in sorted(folders.items()):
        entries[path], problems, warnings = _check_names(folder, spec.num_classes if spec else None)
        report.problems += problems
        report.warnings += warnings
        if not entries[path] and folder.group != "conflict":
            report.problems.append(Problem("missing split", str(path), "no images"))
    flat = [e for es in entries.values() for e in es]
    report.images = len(flat)
    _hash_entries(flat, workers or default_workers(), progress)
    for e in flat:
        if e.digest is None:
            report.problems.append(Problem("unreadable image", str(e.path), e.error))
    sizes = Counter(e.size for e in flat if e.size)
    if spec and sizes and set(sizes) != {(spec.image_size, spec.image_size)}:
        report.warnings.append(
            f"image sizes {dict(sizes)}; {dataset} is read at {spec.image_size}x{spec.image_size} (the loader resizes)"
        )
    report.problems += _duplicates(ratios, entries)
    report.num_classes = spec.num_classes if spec else (max((max(e.y, e.b) for e in flat), default=-1) + 1)
    report.rows = _rows(ratios, entries, report.num_classes)
    for name, splits in ratios:
        train = [e for f in splits["train"] for e in entries.get(f.path, [])]
        nominal = _pct_value(name)  # never None: discover() keeps <number>pct folders only
        problem = _ratio_problem(train, nominal) if nominal is not None else None
        if problem:
            report.problems.append(Problem("conflict ratio", str(root / name), problem))
    return report


def _hash_entries(flat: list[Entry], workers: int, progress: Progress | None) -> None:
    """Decode every distinct file once (in parallel for big trees), recording its pixel
    digest or why it failed. Hard links (prepare-data's copies across ratio folders)
    share an inode, so they are decoded once."""
    inodes = [(st.st_dev, st.st_ino) for st in (e.path.stat() for e in flat)]
    by_inode: dict[tuple[int, int], str] = {}
    for e, inode in zip(flat, inodes):
        by_inode.setdefault(inode, str(e.path))
    paths = sorted(set(by_inode.values()))
    size = max(64, min(1024, len(paths) // (workers * 8) or 1))
    tasks = (paths[i : i + size] for i in range(0, len(paths), size))
    by_path: dict[str, tuple] = {}
    for _, results in run_tasks(_hash_many, tasks, workers if len(paths) > 2000 else 1, len(paths), progress):
        by_path.update((r[0], r[1:]) for r in results)
    for e, inode in zip(flat, inodes):
        e.digest, e.size, e.error = by_path[by_inode[inode]]


def format_report(report: TreeReport, limit: int = 10) -> str:
    """The table, then warnings and problems (at most `limit` of each kind), then the summary."""
    lines = [
        f"{report.root}: {report.images} images (share% = share of the split; columns 0.. = images per class y)",
        markdown(report.rows, cell=float_cell(".2f", nan="-"), aligned=True, empty="(no images)"),
    ]
    if report.warnings:
        lines.append(f"\nwarnings ({len(report.warnings)}):")
        lines += [f"  {w}" for w in report.warnings[:limit]]
        if len(report.warnings) > limit:
            lines.append(f"  ... and {len(report.warnings) - limit} more")
    by_kind = defaultdict(list)
    for p in report.problems:
        by_kind[p.kind].append(p)
    for kind, problems in ((k, by_kind[k]) for k in PROBLEM_KINDS if by_kind[k]):
        lines.append(f"\n{kind} ({len(problems)}): {PROBLEM_KINDS[kind]}")
        lines += [f"  {p.path}: {p.detail}" for p in problems[:limit]]
        if len(problems) > limit:
            lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)
