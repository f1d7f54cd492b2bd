"""Where studies live: a local (or NFS) directory or object storage, through a pyarrow filesystem.

Ray Tune reads and writes experiments through pyarrow filesystems; the study
files of this project (manifest, study definition, confirm configs) and the
study reader go through the same object, so a study is read the same way
wherever it is stored.
"""

from __future__ import annotations

import errno
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, overload

from rest.errors import StudyError, UserError


class StorageError(UserError):
    pass


@dataclass(frozen=True)
class Location:
    """A directory on a filesystem: ``fs`` is a pyarrow FileSystem, ``path`` its path there."""

    fs: Any  # a pyarrow.fs.FileSystem: pyarrow ships no type information
    path: str
    scheme: str = ""  # "" for local paths; "s3", "gs", ... for object storage

    def join(self, *parts: str) -> Location:
        return Location(self.fs, str(PurePosixPath(self.path, *parts)), self.scheme)

    @property
    def uri(self) -> str:
        """What Ray Tune takes as a storage path: the local path, or scheme://bucket/key."""
        return f"{self.scheme}://{self.path}" if self.scheme else self.path

    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def parent(self) -> Location:
        return Location(self.fs, str(PurePosixPath(self.path).parent), self.scheme)

    def __str__(self) -> str:
        return self.uri

    def retrying(self, seconds: float) -> Location:
        """This directory through a filesystem that waits out object-storage stalls for up to `seconds`.

        Local and NFS paths are returned as they are: their errors are not transient
        (a hard NFS mount blocks by itself). See ``rest.storage_retry``.
        """
        if self.is_local or seconds <= 0:
            return self
        from rest.storage_retry import retrying

        return Location(retrying(self.fs, seconds), self.path, self.scheme)

    @property
    def ray_storage(self) -> tuple[str, object]:
        """(path, filesystem) as Ray Tune takes them: a local path alone, or object storage through our filesystem."""
        return (self.uri, None) if self.is_local else (self.path, self.fs)

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path).type == pafs.FileType.File

    def children(self) -> list[Location]:
        """Entries directly inside this directory (none if it does not exist)."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted((Location(self.fs, i.path) for i in infos), key=lambda loc: loc.path)

    def read_text(self) -> str:
        with self.fs.open_input_stream(self.path) as f:
            return f.read().decode()

    def read_json(self):
        """The file's JSON. On object storage a read that overlaps a rewrite of the file can take its size
        from one version and its bytes from the other (a HEAD, then a ranged GET); such a read does not
        parse, or its GET fails (a range past the end of a shorter new version), and is read again, up to
        ten times in all (about a second)."""
        for attempt in range(10):
            try:
                return json.loads(self.read_text())
            except (ValueError, OSError) as exc:  # ValueError: also bytes the GET never filled (UnicodeDecodeError)
                if self.is_local or attempt == 9 or isinstance(exc, FileNotFoundError):
                    raise
                time.sleep(0.02 * (attempt + 1))

    def write_text(self, text: str) -> None:
        """Write a whole file; locally through a temporary file and a rename, so a crash leaves the old one.

        Object stores replace an object in one PUT, which is atomic already.
        """
        if self.is_local:
            tmp = Path(self.path).with_name(Path(self.path).name + ".tmp")
            try:
                tmp.write_text(text)
            except OSError:
                tmp.unlink(missing_ok=True)  # a full disk: give back what the partial file took
                raise
            os.replace(tmp, self.path)
            return
        with self.fs.open_output_stream(self.path) as f:
            f.write(text.encode())

    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def move_to(self, target: Location) -> None:
        """Move a directory (object stores: copy, then delete the source)."""
        if self.is_local:
            os.rename(self.path, target.path)
            return
        import pyarrow.fs as pafs

        pafs.copy_files(self.path, target.path, source_filesystem=self.fs, destination_filesystem=self.fs)
        self.fs.delete_dir(self.path)


def on_filesystem(fs, path: str) -> Location:
    """A directory on a pyarrow filesystem handed over by Ray (a trial's storage): local if the filesystem is."""
    import pyarrow.fs as pafs

    return Location(fs, path, "" if isinstance(fs, pafs.LocalFileSystem) else fs.type_name.rsplit("+", 1)[-1])


def local(path: str | Path) -> Location:
    import pyarrow.fs as pafs

    return Location(pafs.LocalFileSystem(), str(Path(path).expanduser().resolve()))


def open_location(location: str | Path) -> Location:
    """A path (made absolute) or a filesystem URI."""
    text = os.fspath(location)
    if "://" in text:
        import pyarrow.fs as pafs

        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except Exception as exc:  # pyarrow raises several types for a bad URI
            raise StorageError(f"cannot open storage {text} ({str(exc).splitlines()[0]}); check the URI") from None
        return Location(fs, path.rstrip("/"), text.split("://", 1)[0])
    return local(text)


# ------------------------------------------------------------ a full disk

DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})  # no space, a file-size limit, a quota


def is_disk_full(exc: BaseException) -> bool:
    """Whether a failed write failed for want of space.

    OSErrors say so by errno. ``torch.save`` does not: its zip writer only notices that
    fewer bytes landed than it wrote, and raises a RuntimeError "[enforce fail at
    inline_container.cc:...] unexpected pos ..." (or "... file write failed").
    """
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL
    return isinstance(exc, RuntimeError) and "inline_container.cc" in str(exc)


@contextmanager
def writing(path, fix: str):
    """Writes to `path` in the block; a full disk or a file-size limit becomes one line naming the file and `fix`."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc):
            raise
        raise UserError(f"no space left on device writing {path}; {fix}") from None


# ------------------------------------------------------------ output directories


# A local path in, an absolute Path out; a Location in, that Location out.
@overload
def fresh_dir(
    target: str | os.PathLike,
    *,
    what: str = ...,
    fix: str = ...,
    replace: bool = ...,
    create: bool = ...,
) -> Path: ...
@overload
def fresh_dir(
    target: Location,
    *,
    what: str = ...,
    fix: str = ...,
    replace: bool = ...,
    create: bool = ...,
) -> Location: ...
def fresh_dir(
    target: str | os.PathLike | Location,
    *,
    what: str = "output directory",
    fix: str = "choose another one",
    replace: bool = False,
    create: bool = True,
) -> Path | Location:
    """`target` as a directory a command may write into: absent or empty, never someone's files.

    The one check every writer of a new directory makes before writing. Refused, with a
    one-line ``UserError`` that names `what`, the path and (for a non-empty directory) `fix`:
    a file at `target`, or a directory holding anything, unless ``replace`` (the caller
    replaces it itself, e.g. atomically once the new content is complete). Nothing on
    disk is changed when it refuses.

    target: a local path (returned absolute, as a Path) or a ``Location``, local or on
    object storage (returned as given). With ``create`` (the default) the directory and
    its parents are made; ``create=False`` only checks, e.g. before slow work.
    """
    if isinstance(target, Location):
        return _fresh_location(target, what, fix, replace, create)
    path = Path(target).expanduser().resolve()
    try:
        if path.exists() and not path.is_dir():
            raise UserError(f"{what} {path} is a file; give a directory path (nothing was overwritten)")
        if not replace and path.is_dir() and any(path.iterdir()):
            raise UserError(f"{what} {path} already exists and is not empty; {fix} (nothing was overwritten)")
        if create:
            path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot use {what} {path} ({exc.strerror or exc}); {fix}") from None
    return path


def _fresh_location(target: Location, what: str, fix: str, replace: bool, create: bool) -> Location:
    import pyarrow.fs as pafs

    try:
        kind = target.fs.get_file_info(target.path).type
        if kind == pafs.FileType.File:
            raise UserError(f"{what} {target} is a file; give a directory path (nothing was overwritten)")
        if not replace and kind == pafs.FileType.Directory and target.children():
            raise UserError(f"{what} {target} already exists and is not empty; {fix} (nothing was overwritten)")
        if create:
            target.mkdir()
    except OSError as exc:  # pyarrow's errors for unreachable or forbidden storage are OSErrors
        raise UserError(f"cannot use {what} {target} ({str(exc).splitlines()[0]}); {fix}") from None
    return target


# ------------------------------------------------------------ study storage


def _storage_text(storage: str | None) -> str:
    return storage or os.environ.get("REST_TUNE_STORAGE", "studies")


def resolve_storage(storage: str | None) -> str:
    """Where studies go, checked writable: an absolute local path (created if missing) or a URI."""
    text = _storage_text(storage)
    if "://" in text:
        return _check_object_storage(text)
    path = Path(text).expanduser().resolve()  # Ray rejects relative paths
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StudyError(
            f"storage {path} is not writable ({exc.strerror}); pass --storage with a writable directory"
        ) from None
    return str(path)


def _check_object_storage(uri: str) -> str:
    """Write and delete a probe object, so a missing bucket or bad credentials fail now, in one line."""
    location = open_location(uri)
    probe = location.join(f".write-test-{os.getpid()}")
    try:
        probe.write_text("ok")
        location.fs.delete_file(probe.path)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise StudyError(
            f"cannot write to storage {uri} ({reason}); check that the bucket exists and the credentials "
            f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for S3-compatible servers)"
        ) from None
    return uri.rstrip("/")


def existing_storage(storage: str | None) -> str:
    """The storage to read from, untouched (export must not create anything)."""
    text = _storage_text(storage)
    return text if "://" in text else str(Path(text).expanduser().resolve())
