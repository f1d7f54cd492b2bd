"""Command line: builds the parser from one module per command group and dispatches to its handler.

Each group module (train, study, status, export, model, prepare) adds its commands with
``add_parser(subparsers)`` and sets each command's ``handler``. Heavy modules (torch,
Ray, pandas, the study's Ray modules) are imported inside the handlers, so ``--help``
answers at once. Errors a user can fix are printed on one line and
exit with status 2; nothing on disk is overwritten.
"""

from __future__ import annotations

import logging
import sys

from rest.cli import export, model, prepare, status, study, train
from rest.cli.common import PROG, Parser
from rest.errors import UserError

# One module per command group, in --help order; each adds its commands (and their handlers) to the parser.
COMMAND_GROUPS = (train, study, status, export, model, prepare)


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="REST (reweighted sparse training) studies on Ray Tune.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers.required = True
    for group in COMMAND_GROUPS:
        group.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.handler(args)
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_status  # 2: bad input; 3: trials failed (errors.TrialsFailed)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
