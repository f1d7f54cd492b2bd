"""The driver process of a study: joining Ray, refusing impossible trials, stop signals, one driver per study."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import tune_ext
from .errors import StudyError
from .space import StudySpec
from .storage import Location

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """Settings of the driver, as the command line gives them."""

    storage: str
    name: str
    address: str | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    data_root: str | None = None
    verbose: int = 1
    autoscaling: bool = False  # the cluster adds nodes on demand: skip the per-node feasibility check
    stall_minutes: float = 10.0  # warn once when trials wait this long for resources with none running
    storage_retry_seconds: float = 300.0  # object storage that does not answer is retried this long before an error


class Interrupted(KeyboardInterrupt):
    """The driver was asked to stop (SIGINT or SIGTERM); exit status 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def connect(address: str | None, gpus_needed: float) -> None:
    """Join the cluster at `address` (or start a local Ray) and check it can run the trials."""
    import ray

    if address and address.startswith("ray://"):
        raise StudyError(f"--address {address} is a Ray Client address; run the driver on the cluster instead: "
                         f"'ray job submit -- python tune_search.py run ... --address auto' (docs/cluster.md)")
    if address and address != "auto":
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
        except (OSError, ValueError) as exc:
            raise StudyError(f"cannot reach a Ray cluster at {address} ({exc}); check the head node's address and port "
                             f"('ray status' on the head prints it)") from None
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        except ConnectionError as exc:
            raise StudyError(f"cannot connect to Ray at {address}: {str(exc).splitlines()[0]}; start one with 'ray start --head'") from None
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if gpus_needed > 0 and gpus < gpus_needed:
        raise StudyError(f"trials ask for {gpus_needed:g} GPU each but the cluster has {gpus:g}; "
                         f"pass --gpus-per-trial 0 or join a cluster with GPUs")


def check_feasible(spec: StudySpec, opts: RunOptions) -> None:
    """Refuse trials that no node of the cluster can ever run (Ray would wait for them forever).

    Compared per node, not with the cluster's sum: 2 nodes of 4 CPUs cannot run a 6-CPU trial.
    Clusters that autoscale (they add nodes on demand) pass ``opts.autoscaling`` to skip this.
    """
    import ray

    if opts.autoscaling:
        return
    cpus = opts.cpus_per_trial or spec.resources.cpus_per_trial
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else spec.resources.gpus_per_trial
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        raise StudyError(f"no node can run a trial asking for {cpus:g} CPU and {gpus:g} GPU (largest node: "
                         f"{largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU); lower --cpus-per-trial / "
                         f"--gpus-per-trial, or pass --autoscaling on a cluster that adds nodes")


class StopSignals:
    """SIGINT and SIGTERM for the driver: stop the study cleanly, never "finish" it.

    The first signal during ``Tuner.fit`` asks Tune to stop after one last forced
    snapshot (trials stay resumable); outside ``fit``, or on a second signal, the
    driver stops at once by raising ``Interrupted``. Either way the phase is marked
    interrupted and ``resume`` continues it.
    """

    def __init__(self):
        self.received: int | None = None
        self._fitting = False
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        return self.install()

    def install(self) -> "StopSignals":
        """(Re)install the handlers: ``ray.init`` replaces SIGTERM's with its own, so call again after it."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, self._handle)
            self._saved.setdefault(sig, previous)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        self.received = self.received or signum
        tune_listens = callable(signal.getsignal(signal.SIGUSR1))  # Tune installs its handler inside fit()
        if first and self._fitting and tune_listens:
            log.warning("stopping: saving the study state first (signal again to stop at once)")
            tune_ext.request_graceful_stop()
            return
        raise Interrupted(self.received)

    @contextmanager
    def fitting(self):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # no stale Tune handler from an earlier fit()
        self._fitting = True
        try:
            yield
        finally:
            self._fitting = False
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class DriverLock:
    """One driver per study: a lease file in the study directory, renewed by a heartbeat.

    Works on local paths, NFS and object storage alike (a plain file rewritten every
    ``HEARTBEAT`` seconds). A lease is stale when its heartbeat is older than
    ``LEASE`` seconds, or when its holder ran on this host and its process is gone
    (after a kill -9); a stale lease is taken over with a warning. Object stores have
    no create-if-absent, so two drivers started within the same second could both
    win; the re-read after writing narrows that window to a few milliseconds.
    """

    FILE, HEARTBEAT, LEASE = "driver.lock", 10.0, 60.0

    def __init__(self, study: Location):
        self.file = study.join(self.FILE)
        self.name = study.name
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": os.urandom(8).hex(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self._stop = None

    def _holder(self) -> dict | None:
        try:
            return self.file.read_json()
        except (FileNotFoundError, ValueError):
            return None

    def _alive(self, holder: dict) -> bool:
        if time.time() - float(holder.get("heartbeat", 0)) > self.LEASE:
            return False
        if holder.get("host") == self.me["host"]:
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
        return True

    def _write(self) -> None:
        self.file.write_text(json.dumps({**self.me, "heartbeat": time.time()}))

    def __enter__(self) -> "DriverLock":
        import threading

        holder = self._holder()
        if holder and holder.get("token") != self.me["token"]:
            if self._alive(holder):
                raise StudyError(f"study {self.name} is being run by another driver (host {holder.get('host')}, pid "
                                 f"{holder.get('pid')}, since {holder.get('started')}); wait for it to finish or stop it "
                                 f"(Ctrl-C) before resuming")
            log.warning("taking over the study from a driver that is gone (host %s, pid %s)", holder.get("host"), holder.get("pid"))
        self._write()
        time.sleep(0.05)
        if (self._holder() or {}).get("token") != self.me["token"]:
            raise StudyError("another driver started this study at the same moment; run resume again in a minute")
        self._stop = threading.Event()
        threading.Thread(target=self._beat, daemon=True, name="study-lock-heartbeat").start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT):
            if (self._holder() or {}).get("token") == self.me["token"]:
                self._write()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if (self._holder() or {}).get("token") == self.me["token"]:
            self.file.fs.delete_file(self.file.path)
