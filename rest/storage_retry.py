"""Object storage that stalls is waited for, not failed: a pyarrow filesystem that retries until a deadline.

Why a wrapper and not pyarrow's own retries: ``S3FileSystem``'s ``retry_strategy``
counts attempts, not time (and the AWS SDK's retry quota can cut it shorter), so
it cannot promise "keep trying for five minutes". Worse, the count differs by
process: the driver's filesystem, made by ``FileSystem.from_uri``, uses the AWS
SDK's default of 10 attempts (a stalled request fails after about 100 s), while
the copy Ray pickles to every trial worker is rebuilt with pyarrow's default of 3
(it fails after about 10 s). A pause of the object store for 45 s therefore made
the trials' checkpoint uploads fail and spent their retry budget.

``RetryingHandler`` wraps the filesystem (a ``pyarrow.fs.PyFileSystem``) and
retries every call that fails with a transient error (no answer, a timeout, a
refused connection, "slow down", 5xx) with exponential backoff until
``seconds`` have passed since the call began; other errors (not found, access
denied) are raised at once. It pickles with its deadline, so Ray's trial workers
get the same behaviour through the filesystem object Ray hands them. Writes are
spooled to a local temporary file and uploaded on close, so a whole upload is
retried; reads are ranged reads, each retried. Each process logs one warning
when a stall begins and one line when storage answers again.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import threading
import time

import pyarrow as pa
import pyarrow.fs as pafs

log = logging.getLogger(__name__)


def _add_note(exc: BaseException, note: str) -> None:
    """Attach `note` to `exc` (shown under its traceback); Python 3.10 has no notes, so it is logged."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:
        log.error("%s: %s", exc, note)


# Parts of the messages pyarrow gives for errors that go away by themselves (AWS
# SDK error names and curl's, Google Cloud status codes). Anything else is final.
TRANSIENT = (
    "NETWORK_CONNECTION",
    "curlCode",
    "Timeout",
    "timed out",
    "REQUEST_TIMEOUT",
    "SLOW_DOWN",
    "THROTTLING",
    "SERVICE_UNAVAILABLE",
    "INTERNAL_FAILURE",
    "Connection refused",
    "Connection reset",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "HTTP response code 50",
)
FINAL = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
FIRST_DELAY, MAX_DELAY = 0.5, 10.0  # seconds between attempts: doubling, at most MAX_DELAY
SPOOL_IN_MEMORY = 16 << 20  # uploads above this size are spooled to a temporary file


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and not isinstance(exc, FINAL) and any(m in str(exc) for m in TRANSIENT)


class _Stall:
    """One warning per stall and per process, and one line when storage answers again."""

    lock = threading.Lock()
    since: float | None = None

    @classmethod
    def failed(cls, exc: BaseException, seconds: float) -> None:
        with cls.lock:
            if cls.since is None:
                cls.since = time.monotonic()
                log.warning(
                    "object storage not answering (%s); retrying for up to %g s",
                    str(exc).splitlines()[0][:200],
                    seconds,
                )

    @classmethod
    def answered(cls) -> None:
        if cls.since is None:
            return
        with cls.lock:
            if cls.since is not None:
                log.warning("object storage answers again (after %.0f s of retries)", time.monotonic() - cls.since)
                cls.since = None


def retry(fn, *args, seconds: float, gone_ok: bool = False):
    """``fn(*args)``, tried again on transient errors until `seconds` after the first try.

    With ``gone_ok`` (deletions), "not found" after a failed attempt means that attempt
    went through before its answer was lost, and counts as success.
    """
    deadline, delay, retried = time.monotonic() + seconds, FIRST_DELAY, False
    while True:
        try:
            result = fn(*args)
        except FileNotFoundError:
            if gone_ok and retried:
                return None
            raise
        except OSError as exc:
            left = deadline - time.monotonic()
            if not is_transient(exc):
                raise
            if left <= 0:
                _add_note(exc, f"object storage did not answer for {seconds:g} s (storage_retry_seconds)")
                raise
            _Stall.failed(exc, seconds)
            time.sleep(min(delay, left))
            delay, retried = min(2 * delay, MAX_DELAY), True
            continue
        _Stall.answered()
        return result


class _Reader:
    """A file object for ``pa.PythonFile`` whose reads are ranged reads, each retried.

    Through ``pa.PythonFile`` a ``read_at`` moves the position, unlike pyarrow's own files.
    """

    def __init__(self, file, seconds: float):
        self._file, self._seconds, self._pos = file, seconds, 0
        self._size = retry(file.size, seconds=seconds)
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        n = self._size - self._pos if n is None or n < 0 else min(n, self._size - self._pos)
        data = retry(self._file.read_at, n, self._pos, seconds=self._seconds) if n > 0 else b""
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset + (0, self._pos, self._size)[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self.closed = True
        self._file.close()


class _Writer:
    """A file object for ``pa.PythonFile`` that spools what is written and uploads it on close, retried whole."""

    def __init__(self, upload):
        self._upload, self._spool = upload, tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        self.closed = False

    def write(self, data) -> int:
        return self._spool.write(data)

    def tell(self) -> int:
        return self._spool.tell()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._upload(self._spool)
        finally:
            self._spool.close()


class RetryingHandler(pafs.FileSystemHandler):
    """Every call of the wrapped filesystem, retried on transient errors for up to `seconds` (see the module)."""

    def __init__(self, inner: pafs.FileSystem, seconds: float):
        self.inner, self.seconds = inner, float(seconds)

    def __reduce__(self):
        return RetryingHandler, (self.inner, self.seconds)

    def __eq__(self, other) -> bool:
        return isinstance(other, RetryingHandler) and self.inner.equals(other.inner) and self.seconds == other.seconds

    def __ne__(self, other) -> bool:
        return not self == other

    def _call(self, name: str, *args, gone_ok: bool = False):
        return retry(getattr(self.inner, name), *args, seconds=self.seconds, gone_ok=gone_ok)

    def get_type_name(self) -> str:
        return f"retrying+{self.inner.type_name}"

    def normalize_path(self, path):
        return self.inner.normalize_path(path)

    def get_file_info(self, paths):
        return self._call("get_file_info", paths)

    def get_file_info_selector(self, selector):
        return self._call("get_file_info", selector)

    def create_dir(self, path, recursive):
        retry(lambda: self.inner.create_dir(path, recursive=recursive), seconds=self.seconds)

    def delete_dir(self, path):
        self._call("delete_dir", path, gone_ok=True)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        retry(lambda: self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok), seconds=self.seconds)

    def delete_root_dir_contents(self):
        retry(lambda: self.inner.delete_dir_contents("/", accept_root_dir=True), seconds=self.seconds)

    def delete_file(self, path):
        self._call("delete_file", path, gone_ok=True)

    def move(self, src, dest):
        self._call("move", src, dest)

    def copy_file(self, src, dest):
        self._call("copy_file", src, dest)

    def open_input_stream(self, path):
        return pa.PythonFile(_Reader(self._call("open_input_file", path), self.seconds), mode="r")

    def open_input_file(self, path):
        return self.open_input_stream(path)

    def open_output_stream(self, path, metadata):
        def upload(spool) -> None:
            def put() -> None:
                spool.seek(0)
                with self.inner.open_output_stream(path, metadata=metadata) as out:
                    shutil.copyfileobj(spool, out, 8 << 20)

            retry(put, seconds=self.seconds)

        return pa.PythonFile(_Writer(upload), mode="w")

    def open_append_stream(self, path, metadata):
        return self.inner.open_append_stream(path, metadata=metadata)  # object stores cannot append


def _synchronous_s3(fs: pafs.S3FileSystem) -> pafs.S3FileSystem:
    """The same S3 filesystem with uploads in the calling thread and pyarrow's 3 attempts per request.

    Background writes run on Arrow's IO threads, which ``copy_files`` (Ray's checkpoint
    upload) also fills with the per-file copies that call into this wrapper; a copy
    waiting there for its own upload could wait forever (apache/arrow#32372, why Ray
    copies to S3 with ``use_threads=False``, which it cannot know to do here). The
    options are those pyarrow pickles the filesystem with; the few attempts per
    request keep each try short, so the deadline above is what decides.
    """
    rebuild, (options,) = fs.__reduce__()
    return rebuild({**options, "background_writes": False})


INNER = {"s3": _synchronous_s3}  # filesystem type -> how to prepare it for wrapping


def retrying(fs: pafs.FileSystem, seconds: float) -> pafs.FileSystem:
    """`fs` with transient errors retried for `seconds` (0: `fs` itself, unchanged)."""
    if seconds <= 0 or isinstance(fs, (pafs.LocalFileSystem, pafs.PyFileSystem)):
        return fs
    inner = INNER.get(fs.type_name, lambda f: f)(fs)
    return pafs.PyFileSystem(RetryingHandler(inner, seconds))
