"""One driver per study: the lock file in the study directory, its heartbeat, and who holds it.

Ray-free (``rest.report.status`` reads the lock with it). The driver (``rest.study.runner``) hands
``DriverLock`` the way to stop a running ``Tuner.fit`` (``tune_ext.stop_fit``); without it a lost lock
is raised in the main thread at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rest.errors import StudyError
from rest.storage import Location
from rest.study.options import check_lock_timing

log = logging.getLogger(__name__)


def no_fit() -> bool:
    """No ``Tuner.fit`` to stop in this process (a lock held outside Tune, as in tests)."""
    return False


class LockLost(BaseException):
    """The study's lock names another driver: this one stops at once and writes nothing more.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` in Ray
    swallows it or runs cleanup code that writes to the study; ``rest.study.runner.run_study``
    turns it into a StudyError once Tune has unwound.
    """


def _read(read, path: str) -> str | None:
    try:
        return read(path).strip()
    except OSError:
        return None


def this_machine() -> dict:
    """What two drivers must share to see each other's processes: host name, boot and pid namespace."""
    return {
        "host": socket.gethostname(),
        "boot": _read(lambda p: Path(p).read_text(), "/proc/sys/kernel/random/boot_id"),
        "pidns": _read(os.readlink, "/proc/self/ns/pid"),
    }


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, started: str | None) -> bool:
    """Whether process `pid` of this machine exists and is the one that started at `started`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now = process_start(pid)
    return started is None or now is None or now == started


def describe_holder(holder: dict) -> str:
    age = time.time() - float(holder.get("heartbeat", 0))
    return (
        f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('started')}, "
        f"last heartbeat {age:.0f} s ago"
    )


class DriverLock:
    """One driver per study: a lease file in the study directory, renewed by a heartbeat.

    Works on local paths, NFS and object storage alike (a plain file rewritten every
    `heartbeat` seconds). A new driver takes the study over only from a holder that is
    surely gone:

    - on this machine (same host name, boot and pid namespace): when the holder's
      process no longer exists. A live one is never taken over, however old its
      heartbeat: it may be paused (Ctrl-Z, a debugger, SIGSTOP) and would go on.
    - on another host: when its heartbeat is older than its lease (it cannot be asked).

    The holder checks the lock before every write to the study (``check``: the
    manifest, Ray's experiment snapshots through ``tune_ext.guard_snapshots``), and
    the heartbeat thread checks it on every beat. When the lock names another driver
    (a holder on another host paused or cut off past its lease), ``LockLost`` is
    raised in the main thread at once (or, while `stop_fit()` says it asked a running
    ``Tuner.fit`` to stop, when Tune writes its next snapshot). Object stores have no compare-and-swap, so two
    drivers acting within the same few milliseconds could both win; the re-read after
    writing narrows that window (docs/reliability.md).
    """

    FILE = "driver.lock"

    def __init__(
        self, study: Location, lease: float = 60.0, heartbeat: float = 10.0, stop_fit: Callable[[], bool] = no_fit
    ):
        check_lock_timing(lease, heartbeat)
        self.stop_fit = stop_fit
        self.file = study.join(self.FILE)
        self.name = study.name
        self.lease, self.heartbeat = float(lease), float(heartbeat)
        self.me = {
            **this_machine(),
            "pid": os.getpid(),
            "pid_started": process_start(os.getpid()),
            "token": os.urandom(8).hex(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "lease": self.lease,
            "every": self.heartbeat,
        }
        self.lost: dict | None = None
        self._raised = False
        self._stop: threading.Event | None = None  # both set while the heartbeat runs (from __enter__)
        self._thread: threading.Thread | None = None
        self._saved_handler: tuple | None = None  # (previous SIGUSR2 handler,) while the main thread listens
        self._confirmed = (0.0, 0.0)  # (monotonic, wall) time at which the lock last named this driver

    # --------------------------------------------------------------- reading

    def _holder(self) -> dict | None:
        try:
            return self.file.read_json()
        except (FileNotFoundError, ValueError):
            return None

    def _mine(self, holder: dict | None) -> bool:
        return (holder or {}).get("token") == self.me["token"]

    def _gone(self, holder: dict) -> str | None:
        """Why `holder` is surely gone (then it may be taken over), or None while it may still run."""
        booted = holder.get("boot")
        if holder.get("host") == self.me["host"] and booted and booted != self.me["boot"]:
            return "this host has restarted since"
        if all(holder.get(k) == self.me[k] for k in ("host", "boot", "pidns")):
            pid = holder.get("pid")
            if isinstance(pid, int) and pid > 0 and pid_alive(pid, holder.get("pid_started")):
                return None
            return "its process is gone"
        age = time.time() - float(holder.get("heartbeat", 0))
        lease = float(holder.get("lease") or self.lease)
        return f"no heartbeat for {age:.0f} s, longer than its {lease:g} s lease" if age > lease else None

    def _refusal(self, holder: dict) -> StudyError:
        pid, host = holder.get("pid"), holder.get("host")
        age, lease = time.time() - float(holder.get("heartbeat", 0)), float(holder.get("lease") or self.lease)
        if host != self.me["host"]:
            how = (
                f"wait for it to finish or stop it (Ctrl-C, or kill -INT {pid} on {host}); a driver on another host "
                f"is taken over only when its heartbeat is older than its {lease:g} s lease"
            )
        elif age > 2 * float(holder.get("every") or self.heartbeat):
            how = (
                f"it is probably paused (Ctrl-Z, a debugger, SIGSTOP) and is never taken over while its process "
                f"lives: continue it (fg, or kill -CONT {pid}) or stop it (kill -INT {pid}; kill -CONT {pid})"
            )
        else:
            how = f"wait for it to finish or stop it (Ctrl-C, or kill -INT {pid})"
        return StudyError(f"study {self.name} is being run by another driver ({describe_holder(holder)}); {how}")

    def _lost_error(self) -> LockLost:
        self._raised = True  # the heartbeat's signal raises it only if nothing else has
        holder = self.lost or {}
        who = f"host {holder.get('host')}, pid {holder.get('pid')}" if holder else "its lock file is gone"
        return LockLost(
            f"another driver took over this study ({who}); this driver was paused or cut off from storage "
            f"for longer than its {self.lease:g} s lease and stopped without writing more to the study; the "
            f"other driver continues it (if that one is gone too: tune_search.py resume {self.name})"
        )

    # --------------------------------------------------------------- holding

    def _write(self) -> None:
        self.file.write_text(json.dumps({**self.me, "heartbeat": time.time()}))
        self._confirmed = (time.monotonic(), time.time())

    def _since_confirmed(self) -> float:
        """Seconds since the lock last named this driver, by whichever clock saw more pass (a paused VM)."""
        return max(time.monotonic() - self._confirmed[0], time.time() - self._confirmed[1])

    def check(self) -> None:
        """Raise ``LockLost`` unless the lock still names this driver (one read of the lock file).

        If storage cannot be read, the lock is taken as held while it was confirmed less
        than half a lease ago (no other driver may take it over before a whole lease).
        """
        if self.lost is None:
            try:
                holder = self._holder()
            except OSError:
                if self._since_confirmed() < self.lease / 2:
                    return
                raise
            if self._mine(holder):
                self._confirmed = (time.monotonic(), time.time())
                return
            self.lost = holder or {}
        raise self._lost_error()

    def __enter__(self) -> DriverLock:
        holder = self._holder()
        if holder and not self._mine(holder):
            reason = self._gone(holder)
            if reason is None:
                raise self._refusal(holder)
            log.warning(
                "taking over the study from a driver that is gone (host %s, pid %s: %s)",
                holder.get("host"),
                holder.get("pid"),
                reason,
            )
        self._write()
        time.sleep(0.05)
        if not self._mine(self._holder()):
            raise StudyError("another driver started this study at the same moment; run resume again in a minute")
        if threading.current_thread() is threading.main_thread():
            self._saved_handler = (signal.signal(signal.SIGUSR2, self._on_lost),)
        self._stop = stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(stop,), daemon=True, name="study-lock-heartbeat")
        self._thread.start()
        return self

    def _on_lost(self, signum: int, frame) -> None:
        if self.lost is not None and not self._raised:
            raise self._lost_error()

    def _beat(self, stop: threading.Event) -> None:
        """Renew the lock every `heartbeat` seconds until `stop` is set; on finding it taken, stop the main thread."""
        while not stop.wait(self.heartbeat):
            try:
                holder = self._holder()
                if not self._mine(holder):
                    self.lost = holder or {}
                    if self.stop_fit():
                        # Inside Tune's fit the main thread may sit in Ray's C code, where an exception raised
                        # by a signal handler turns into a SystemError: Tune stops; the snapshot guard
                        # (or the next manifest write) then raises LockLost before anything is written.
                        pass
                    elif self._saved_handler is not None:  # LockLost in the main thread, wherever it is
                        main = threading.main_thread().ident
                        assert main is not None  # only a thread not yet started has no ident
                        signal.pthread_kill(main, signal.SIGUSR2)
                    else:
                        log.warning("%s", self._lost_error())  # raised at the next check
                    return
                self._write()
            except OSError as exc:  # storage briefly unreachable: the lease allows a few missed beats
                log.warning("could not renew the study lock %s (%s); retrying", self.file, str(exc).splitlines()[0])

    def __exit__(self, *exc) -> None:
        self._raised = True  # leaving: a late signal from the heartbeat thread must not raise here
        assert self._stop is not None and self._thread is not None  # __enter__ started the heartbeat
        self._stop.set()
        self._thread.join(timeout=self.heartbeat)  # no beat may rewrite the file after it is deleted below
        if self._saved_handler is not None:
            signal.signal(signal.SIGUSR2, self._saved_handler[0])
        if self.lost is None and self._mine(self._holder()):
            self.file.fs.delete_file(self.file.path)
