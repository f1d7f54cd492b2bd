"""Where studies live: a local (or NFS) directory or object storage, through a pyarrow filesystem.

Ray Tune reads and writes experiments through pyarrow filesystems; the study
files of this project (manifest, study definition, confirm configs) and the
study reader go through the same object, so a study is read the same way
wherever it is stored.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import UserError


class StorageError(UserError):
    pass


@dataclass(frozen=True)
class Location:
    """A directory on a filesystem: ``fs`` is a pyarrow FileSystem, ``path`` its path there."""

    fs: object
    path: str
    scheme: str = ""  # "" for local paths; "s3", "gs", ... for object storage

    def join(self, *parts: str) -> "Location":
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

    def __str__(self) -> str:
        return self.uri

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path).type == pafs.FileType.File

    def children(self) -> list["Location"]:
        """Entries directly inside this directory (none if it does not exist)."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted((Location(self.fs, i.path) for i in infos), key=lambda loc: loc.path)

    def read_text(self) -> str:
        with self.fs.open_input_stream(self.path) as f:
            return f.read().decode()

    def read_json(self):
        return json.loads(self.read_text())

    def write_text(self, text: str) -> None:
        """Write a whole file; locally through a temporary file and a rename, so a crash leaves the old one.

        Object stores replace an object in one PUT, which is atomic already.
        """
        if self.is_local:
            tmp = Path(self.path).with_name(Path(self.path).name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path)
            return
        with self.fs.open_output_stream(self.path) as f:
            f.write(text.encode())

    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def move_to(self, target: "Location") -> None:
        """Move a directory (object stores: copy, then delete the source)."""
        if self.is_local:
            os.rename(self.path, target.path)
            return
        import pyarrow.fs as pafs

        pafs.copy_files(self.path, target.path, source_filesystem=self.fs, destination_filesystem=self.fs)
        self.fs.delete_dir(self.path)


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
