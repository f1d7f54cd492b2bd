"""An export's output directory holds one export: the files of the last one, and nothing stale.

Every export records the files it wrote in a marker in the directory (``MARKER``: the
studies exported and the file names). Exporting the same studies into it again replaces
that export: files the earlier export wrote and this one does not (a format or a
selection no longer asked for) are removed. A directory holding anything else (files
the marker does not list, or the export of other studies) is refused, and nothing in
it is touched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from rest.errors import UserError
from rest.storage import fresh_dir

MARKER = ".rest-export.json"
# What an export may write: the files of a marker written before markers listed them.
_EXPORT_NAMES = re.compile(
    r"((best_configs|paper_table|by_density)(_oracle)?\.(md|csv|tex)|trials\.csv|summary\.md|"
    r"accuracy_vs_density(_oracle)?\.png)"
)


def earlier_export(out: Path) -> tuple[str | None, list[str]]:
    """(studies, files) of the export held in `out`; (None, []) when it holds none."""
    marker = out / MARKER
    try:
        held = json.loads(marker.read_text()) if marker.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        held = {}
    if not isinstance(held, dict) or not held.get("study"):
        return None, []
    files = held.get("files")
    if files is None:  # an older marker: every export-named file is that export's
        files = sorted(p.name for p in out.iterdir() if _EXPORT_NAMES.fullmatch(p.name))
    return str(held["study"]), [str(f) for f in files]


def claim(out: Path, owner: str, names: list[str]) -> tuple[Path, list[str]]:
    """Make `out` ready for the export of `owner` writing `names`; the earlier export's files.

    Refused (one-line ``UserError``, nothing touched) when `out` holds files that are not
    an earlier export's of the same studies. The marker lists the earlier files and the
    new ones until ``settle``, so an export cut short leaves no file unaccounted for.
    """
    out = Path(out).expanduser().resolve()
    previous, earlier = earlier_export(out) if out.is_dir() else (None, [])
    foreign = sorted(p.name for p in out.iterdir() if p.name not in {MARKER, *earlier}) if out.is_dir() else []
    listing = (
        f"other files ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})"
        if foreign
        else f"a damaged {MARKER}"
    )
    held = f"the export of {previous}" if previous not in (None, owner) else listing
    mine = previous == owner and not foreign
    out = fresh_dir(out, what="--out", fix=f"it holds {held}; choose another --out", replace=mine)
    _write_marker(out, owner, sorted({*earlier, *names}) if mine else list(names))
    return out, earlier if mine else []


def settle(out: Path, owner: str, names: list[str], earlier: list[str]) -> None:
    """After the export wrote `names`: remove the earlier export's other files and list only these."""
    for name in sorted(set(earlier) - set(names)):
        (out / name).unlink(missing_ok=True)
    _write_marker(out, owner, list(names))


def _write_marker(out: Path, owner: str, names: list[str]) -> None:
    try:
        (out / MARKER).write_text(json.dumps({"study": owner, "files": names}))
    except OSError as exc:
        raise UserError(f"cannot write to {out} ({exc.strerror}); choose a writable --out") from None
