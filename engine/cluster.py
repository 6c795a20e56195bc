"""The Dask cluster a batch runs on when no scheduler is given: on this machine, for this batch
alone (TLS with a certificate made for it, no HTTP server on any node)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import SpecCluster
    from distributed.security import Security


def local_cluster(workers: int) -> tuple[SpecCluster, Security]:
    """A Dask cluster on this machine that only this batch can use.

    Its scheduler and workers listen on 127.0.0.1 and speak TLS with a certificate made
    for this batch alone (``Security.temporary()``: kept in memory, never written), and
    require it of every peer: another user of the machine can reach the port but cannot
    submit work, read results or join as a worker. None of them serves HTTP: Dask's
    dashboard and its worker pages (``/health``, ``/info/call-stacks``, which shows the
    running jobs' code) would answer anyone on the machine without a login, and Dask
    starts them even with ``dashboard_address=None``. Nor do the workers run Dask's
    statistical profiler, whose only reader is that dashboard.
    """
    import dask
    from distributed import Nanny, SpecCluster
    from distributed.security import Security

    security = Security.temporary()
    common = {"host": "127.0.0.1", "protocol": "tls://", "security": security}
    scheduler = {
        "cls": __getattr__("SchedulerWithoutHttp"),
        "options": {**common, "dashboard": False, "dashboard_address": None},
    }
    worker = {
        "cls": Nanny,
        "options": {
            **common,
            "nthreads": 1,
            "worker_class": __getattr__("WorkerWithoutHttp"),
            "dashboard": False,
            "silence_logs": logging.ERROR,
        },
    }
    # Each nanny keeps the configuration it was made with (here, as the cluster starts) for
    # every worker process it starts. Dask's statistical profiler samples every thread's
    # stack every 10 ms, under the GIL, for a dashboard this cluster does not serve: a
    # batch took 1.05 times as long with it (docs/operations.md).
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = SpecCluster(
            workers={i: worker for i in range(workers)},
            scheduler=scheduler,
            security=security,
            silence_logs=logging.ERROR,
            name="medadapt-batch",
        )
    return cluster, security


def _no_http_server(
    self: Any, routes: Any, dashboard_address: Any, default_port: int = 0, ssl_options: Any = None
) -> None:
    """In place of Dask's ``ServerNode.start_http_server``: the application is built, as
    the node's other code expects, but nothing listens."""
    from distributed.http.routing import RoutingApplication
    from tornado.httpserver import HTTPServer

    self.http_application = RoutingApplication(routes)
    self.http_server = HTTPServer(self.http_application)


#: Dask's scheduler and worker, without an HTTP server. The worker class is imported by
#: name in each worker process, so the classes are module attributes, made on first use:
#: importing this module does not import distributed.
_WITHOUT_HTTP = {"SchedulerWithoutHttp": "Scheduler", "WorkerWithoutHttp": "Worker"}


def __getattr__(name: str) -> Any:
    if name not in _WITHOUT_HTTP:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import distributed

    base = getattr(distributed, _WITHOUT_HTTP[name])
    cls = type(name, (base,), {"start_http_server": _no_http_server, "__module__": __name__})
    globals()[name] = cls
    return cls
