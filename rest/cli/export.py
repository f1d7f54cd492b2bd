"""The ``export`` command: best-config tables, a plot and a summary of one or more studies."""

from __future__ import annotations

import argparse
from pathlib import Path

from rest.selection import RANKING_NAMES


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="best-config tables, a plot and a summary from a study directory")
    p.add_argument("study", nargs="+", help="study name (under --storage) or path; several: one merged table")
    p.add_argument(
        "--storage",
        default=None,
        help="directory or s3:// / gs:// URI holding studies (default $REST_TUNE_STORAGE or ./studies)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default results/<study name>); it holds "
        "this export alone: an earlier export of the same studies there is replaced, other files are refused",
    )
    p.add_argument("--format", default="md,csv,tex", help="comma-separated: md, csv, tex (default md,csv,tex)")
    p.add_argument(
        "--selection",
        dest="ranking",
        choices=RANKING_NAMES,
        default="val",
        help="rank configs on validation as the study's selection setting says (default) or, "
        "labelled ORACLE, on test worst-group accuracy",
    )
    p.set_defaults(handler=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    from rest.report.export import export, read_for_export
    from rest.study.manifest import find_study

    studies = [read_for_export(find_study(s, args.storage)) for s in args.study]
    out = args.out or Path("results") / "-".join(s.name for s in studies)
    written = export(studies, out, [f.strip() for f in args.format.split(",") if f.strip()], args.ranking)
    names = ", ".join(s.name for s in studies)
    print(f"exported {names} ({sum(len(s.all_trials()) for s in studies)} trials) to {written[0].parent}:")
    for path in written:
        print(f"  {path.name}")
    return 0
