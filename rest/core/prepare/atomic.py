"""A dataset tree appears at --out complete or not at all.

The tree is built in a hidden sibling of --out (``.<name>.partial-<pid>``) and
renamed into place when complete; a build killed outright leaves only that
sibling, which the next build of the same --out removes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rest.errors import UserError
from rest.storage import fresh_dir

log = logging.getLogger(__name__)


def refuse_existing(out: Path, force: bool) -> None:
    """A non-empty --out is replaced only with --force; a file at --out never."""
    fresh_dir(out, what="--out", fix="choose another --out or pass --force to replace it", replace=force, create=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale(out: Path) -> None:
    """Remove half-built trees of `out` left by killed builds (their pid is gone).

    A '.old-' sibling is only left if a --force build was killed between its two
    renames; it may then be the only copy of the previous tree, so it is kept and named.
    """
    for path in out.parent.glob(f".{out.name}.*-*"):
        match = re.fullmatch(rf"\.{re.escape(out.name)}\.(partial|old)-(\d+)", path.name)
        if not (match and path.is_dir()) or _pid_alive(int(match.group(2))):
            continue
        if match.group(1) == "partial":
            log.info("removing %s, left by an interrupted build", path)
            shutil.rmtree(path, ignore_errors=True)
        else:
            log.warning("%s holds the tree an interrupted --force build was replacing; delete it or move it back", path)


@contextmanager
def atomic_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a hidden sibling of `out` to build in; on success it becomes `out`.

    On any exception (Ctrl-C included) the sibling is removed and `out` is untouched.
    With force, an existing `out` is replaced only once the new tree is complete: it
    is renamed aside, the new tree renamed in, then the old one deleted. A build
    killed outright (SIGKILL) leaves its sibling behind; the next build of the same
    `out` removes it.
    """
    refuse_existing(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out.parent} ({exc.strerror}); choose a writable --out") from None
    _sweep_stale(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        refuse_existing(out, force)  # something may have appeared while we built
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
