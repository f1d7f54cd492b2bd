"""The driver process of a study: joining Ray, refusing impossible trials, stop signals (one driver per study:
``rest.study.lock``)."""

from __future__ import annotations

import logging
import signal
import socket
from contextlib import contextmanager
from typing import Any

from rest.errors import StudyError
from rest.study import tune_ext
from rest.study.options import RunOptions
from rest.study.space import StudySpec

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """The driver was asked to stop (SIGINT or SIGTERM); exit status 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def ray_target(address: str | None) -> str:
    """What ``ray.init`` gets for `address`: "local" (a private Ray), or a HOST:PORT that answers.

    None or "local": a Ray started for this driver alone, even when another cluster
    runs on this machine. "auto": the cluster ``ray start`` last started on this
    machine. HOST:PORT: that cluster. A cluster that is not there fails in seconds,
    never by hanging on "Failed to connect to GCS".
    """
    if address in (None, "local"):
        return "local"
    if address.startswith("ray://"):
        raise StudyError(
            f"--address {address} is a Ray Client address; run the driver on the cluster instead: "
            f"'ray job submit -- python tune_search.py run ... --address auto' (docs/cluster.md)"
        )
    if address != "auto":
        _check_reachable(
            address,
            f"a Ray cluster at {address}",
            "check the head node's address and port ('ray status' on the head prints it)",
        )
        return address
    found = tune_ext.current_cluster_address()
    if not found:
        raise StudyError(
            "--address auto: no Ray cluster was started on this machine; start one with 'ray start --head', "
            "or leave --address out for a private Ray"
        )
    _check_reachable(
        found,
        f"the cluster this machine last started ({found}, --address auto)",
        "start it again with 'ray start --head', or leave --address out for a private Ray",
    )
    return found


def _check_reachable(address: str, what: str, fix: str) -> None:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
    except (OSError, ValueError) as exc:
        raise StudyError(f"cannot reach {what} ({exc}); {fix}") from None


def connect(address: str | None, gpus_needed: float, quiet: bool = False) -> None:
    """Join the cluster at `address` (None or "local": start a private Ray) and check it can run the trials.

    Trial workers' output is never forwarded to the driver (it is in the trials' logs); `quiet`
    keeps Ray's own INFO lines (the start-up banner) from the console too.
    """
    import ray

    target = ray_target(address)
    if not ray.is_initialized():
        if target == "local":
            log.info("starting a private Ray for this driver (--address auto joins this machine's cluster)")
        try:
            ray.init(
                address=target,
                log_to_driver=False,
                logging_level=logging.WARNING if quiet else logging.INFO,
                include_dashboard=False if target == "local" else None,  # None: Ray's default
            )
        except ConnectionError as exc:
            raise StudyError(
                f"cannot connect to Ray at {target}: {str(exc).splitlines()[0]}; start one with "
                f"'ray start --head', or leave --address out for a private Ray"
            ) from None
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if gpus_needed > 0 and gpus < gpus_needed:
        raise StudyError(
            f"trials ask for {gpus_needed:g} GPU each but the cluster has {gpus:g}; "
            f"pass --gpus-per-trial 0 or join a cluster with GPUs"
        )


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
        largest: dict = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        raise StudyError(
            f"no node can run a trial asking for {cpus:g} CPU and {gpus:g} GPU (largest node: "
            f"{largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU); lower --cpus-per-trial / "
            f"--gpus-per-trial, or pass --autoscaling on a cluster that adds nodes"
        )


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

    def __enter__(self) -> StopSignals:
        return self.install()

    def install(self) -> StopSignals:
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
        if first and self._fitting and tune_ext.fit_listens():
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
