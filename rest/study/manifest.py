"""A study's directory on storage: its name, manifest and frozen definition.

    <storage>/<name>/study.yaml      the study definition, as given
    <storage>/<name>/manifest.json   options, phase statuses, and the definition's hash and text

Nothing here imports Ray or torch: the study reader and export use it too.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict
from typing import Any

import yaml

from rest.errors import StudyError, UserError
from rest.storage import Location, existing_storage, fresh_dir, open_location, writing
from rest.study.space import StudySpec, parse_space

PHASES = ("search", "confirm")
# Deterministic halving's rung cuts, in the study directory
# (written by rest/study/rungs.py, read by rest/report/status.py).
RUNGS_FILE = "search_rungs.json"

NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]+")


def check_name(name: str) -> str:
    """A study name is one path component: letters, digits, '-', '_', '.' (not '.' or '..')."""
    if not NAME_CHARS.fullmatch(name or "") or name in (".", ".."):
        raise StudyError(
            f"study name {name!r} is not allowed; use letters, digits, '-', '_' and '.' only (one "
            f"directory name, e.g. --name cmnist_rest)"
        )
    return name


def study_dir(storage: str, name: str) -> Location:
    return open_location(storage).join(check_name(name))


def read_manifest(path: Location) -> dict:
    try:
        return path.join("manifest.json").read_json()
    except json.JSONDecodeError:
        raise StudyError(f"{path.join('manifest.json')} is damaged (not JSON); restore it from a copy") from None


def resume_after_full_disk(path: Location) -> str:
    return f"free space and `tune_search.py resume {path.name} --storage {path.parent}`"


def write_manifest(path: Location, manifest: dict, fix: str | None = None) -> None:
    """manifest.json; a full disk is one line naming `fix` (default: resume the study)."""
    file = path.join("manifest.json")
    with writing(file, fix or resume_after_full_disk(path)):
        file.write_text(json.dumps(manifest, indent=1))


def refuse_existing(storage: str, name: str) -> None:
    """A new study needs a fresh directory; an existing study is continued with resume."""
    fresh_dir(
        study_dir(storage, name),
        what=f"study '{name}'",
        create=False,
        fix=f"continue it with 'tune_search.py resume {name} --storage {storage}' or pick another --name",
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def create_study(spec: StudySpec, yaml_text: str, opts, command: str) -> Location:
    """The study directory with its definition and a fresh manifest (`opts`: the driver's RunOptions)."""
    refuse_existing(opts.storage, opts.name)
    path = study_dir(opts.storage, opts.name)
    path.mkdir()  # exist_ok: an empty directory left by a refused start is reused
    manifest = {
        "name": opts.name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
        "options": asdict(opts),
        "grid_trials": spec.grid_size(),
        "study_sha256": _digest(yaml_text),
        "study_yaml": yaml_text,
        "phases": {p: {"status": "pending", "wall_seconds": 0.0} for p in PHASES},
    }
    if spec.confirm is None:
        manifest["phases"]["confirm"]["status"] = "skipped"
    again = "free space and run the command again"
    try:
        with writing(path.join("study.yaml"), again):
            path.join("study.yaml").write_text(yaml_text)
        write_manifest(path, manifest, fix=again)
    except UserError:  # a full disk: no half-made study is left behind (the directory was empty or absent)
        path.fs.delete_dir(path.path)
        raise
    return path


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def describe_changes(original: str, edited: str) -> str:
    """'train.epochs: 4 -> 6, scheduler.type: asha -> (removed)', for a refusal message."""
    try:
        old, new = _flatten(yaml.safe_load(original) or {}), _flatten(yaml.safe_load(edited) or {})
    except yaml.YAMLError:
        return "the file no longer parses"
    changes = [
        f"{k}: {old.get(k, '(absent)')} -> {new.get(k, '(removed)')}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    return (
        ", ".join(changes[:5]) + (f" and {len(changes) - 5} more" if len(changes) > 5 else "")
        or "comments or layout only"
    )


def frozen_spec(location, manifest: dict) -> StudySpec:
    """The study definition a study was started with; an edited or missing study.yaml is refused.

    `location` is the storage.Location of the study directory.
    """
    file = location.join("study.yaml")
    original = manifest.get("study_yaml")
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise StudyError(
            f"{file} is missing; restore it (the original text is kept under 'study_yaml' in manifest.json)"
            if original
            else f"{file} is missing; restore it from a copy"
        ) from None
    except UnicodeDecodeError:
        raise StudyError(f"{file} is not a text file; restore the study definition") from None
    refuse_edited(file, text, manifest)
    return parse_space(text, str(file), frozen=True)


def refuse_edited(file, text: str, manifest: dict) -> None:
    """Refuse a definition `text` (read from `file`) that is not the one the study started with, naming the changes."""
    if manifest.get("study_sha256") and _digest(text) != manifest["study_sha256"]:
        raise StudyError(
            f"{file} was edited after the study started ({describe_changes(manifest.get('study_yaml') or '', text)}); "
            f"a study's definition is frozen: restore the original (kept under 'study_yaml' in manifest.json) "
            f"or run the edited file as a new study under another name (--name, or name= in rest.run_study)"
        )


def open_study(storage: str, name: str) -> tuple[Location, StudySpec, dict]:
    path = study_dir(storage, name)
    if not path.join("manifest.json").is_file():
        known = sorted(c.name for c in open_location(storage).children() if c.join("manifest.json").is_file())
        raise StudyError(
            f"no study '{name}' in {storage}; known studies: {', '.join(known) or 'none'} "
            f"(pass --storage if it lives elsewhere)"
        )
    manifest = read_manifest(path)
    return path, frozen_spec(path, manifest), manifest


def find_study(name_or_path: str, storage: str | None) -> Location:
    """A study's directory from its path (or URI), else its name under storage; read-only, creates nothing."""
    direct = open_location(name_or_path)
    if direct.join("manifest.json").is_file():
        return direct
    candidate = open_location(existing_storage(storage)).join(name_or_path)
    if candidate.join("manifest.json").is_file():
        return candidate
    raise StudyError(
        f"{name_or_path} is not a study directory (no manifest.json there or under --storage); "
        f"pass the study's path or its name with --storage"
    )


def phase_complete(info: dict) -> bool:
    """Done (or skipped) with no failed trial; studies written before failed phases existed
    recorded trials that errored under 'done', with their count under 'errors'."""
    return info["status"] in ("done", "skipped") and not info.get("errors")


def is_complete(manifest: dict) -> bool:
    return all(phase_complete(info) for info in manifest["phases"].values())
