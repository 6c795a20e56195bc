"""`medadapt batch`: jobs on a real local Dask cluster (loopback), surviving failures."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medadapt.engine.batch import (
    BATCH_JSON,
    FAILED,
    FINISHED,
    JOB_JSON,
    JOB_LOG,
    SKIPPED,
    read_jobs_file,
    run_batch,
)
from medadapt.engine.cli import cli
from medadapt.engine.contracts.errors import ExitCode

pytestmark = pytest.mark.slow


def write(folder: Path, name: str, data: dict) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def batch(tmp_path, monkeypatch, phantom_site):
    """A source profile to train from and three target sites, as a jobs file."""
    monkeypatch.setenv("MEDADAPT_CACHE_DIR", str(tmp_path / "cache"))

    def make(epochs: int = 3, broken: bool = False) -> Path:
        write(tmp_path, "source.yaml", phantom_site("Source", 40, epochs=epochs))
        scanners = ["ge-sharp-low-dose", "siemens-smooth-standard-dose", "ge-sharp-low-dose"]
        jobs = []
        for number, scanner in enumerate(scanners, start=1):
            target = phantom_site(f"Site {number}", 40 + number, epochs=epochs, scanner=scanner)
            if broken and number == 2:
                target["augmentatons"] = []  # a typo: the profile is invalid
            write(tmp_path, f"site-{number}.yaml", target)
            jobs.append({"profile": f"site-{number}.yaml"})
        return write(
            tmp_path,
            "jobs.yaml",
            {"defaults": {"train": "source.yaml", "method": "adabn"}, "jobs": jobs},
        )

    return make


def test_three_jobs_on_two_workers_complete_and_a_rerun_skips_them(batch, tmp_path):
    jobs = read_jobs_file(batch())
    outcomes = run_batch(jobs, tmp_path / "out", workers=2)
    assert [o.status for o in outcomes] == [FINISHED] * 3
    summary = json.loads((tmp_path / "out" / BATCH_JSON).read_text())
    assert summary["counts"] == {FINISHED: 3, SKIPPED: 0, FAILED: 0}
    for entry in summary["jobs"]:
        folder = Path(entry["folder"])
        assert folder.name == entry["id"]  # finished: renamed from <id>.partial
        assert (folder / JOB_JSON).is_file()
        assert (folder / "validate" / "report.html").is_file()
        assert entry["verdict"] in ("pass", "fail")
        assert 0.0 <= entry["auroc"]["value"] <= 1.0
    assert not list((tmp_path / "out" / "jobs").glob("*.partial"))
    started = time.perf_counter()
    again = run_batch(read_jobs_file(tmp_path / "jobs.yaml"), tmp_path / "out", workers=2)
    assert [o.status for o in again] == [SKIPPED] * 3
    assert [o.result for o in again] == [o.result for o in outcomes]
    assert time.perf_counter() - started < 5  # no cluster is even started


def test_a_broken_profile_fails_with_its_reason_and_the_others_finish(batch, tmp_path):
    result = CliRunner().invoke(
        cli, ["batch", str(batch(broken=True)), "--workers", "2", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == ExitCode.SOME_JOBS_FAILED, result.output
    summary = json.loads((tmp_path / "out" / BATCH_JSON).read_text())
    statuses = {entry["name"]: entry["status"] for entry in summary["jobs"]}
    assert statuses == {"site-1": FINISHED, "site-2": FAILED, "site-3": FINISHED}
    failed = next(entry for entry in summary["jobs"] if entry["status"] == FAILED)
    assert "augmentatons: unknown key (did you mean 'augmentations'?)" in failed["reason"]
    assert "failed" in result.output
    # Bad input is not retried: one attempt in the job's log.
    log = (Path(failed["folder"]) / JOB_LOG).read_text()
    assert log.count("attempt on") == 1


def test_a_killed_workers_job_is_run_again_and_resumes_from_its_checkpoint(batch, tmp_path):
    from distributed import Client, LocalCluster

    jobs = read_jobs_file(batch(epochs=14))
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    outcome: dict = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            done=run_batch(jobs, tmp_path / "out", scheduler=cluster.scheduler_address)
        )
    )
    runner.start()
    killed = None
    try:
        with Client(cluster) as client:
            deadline = time.monotonic() + 240
            while killed is None and time.monotonic() < deadline:
                for job in jobs:
                    train = tmp_path / "out" / "jobs" / f"{job.id}.partial" / "train"
                    if (train / "checkpoint.pt").is_file() and not (train / "run.json").exists():
                        pids = client.run(os.getpid)
                        for worker, keys in client.processing().items():
                            if f"medadapt-{job.id}" in keys:
                                os.kill(pids[worker], signal.SIGKILL)
                                killed = job
                        break
                time.sleep(0.2)
        runner.join(timeout=600)
    finally:
        cluster.close()
    assert killed is not None, "no job was caught in training"
    assert [o.status for o in outcome["done"]] == [FINISHED] * 3
    log = (tmp_path / "out" / "jobs" / killed.id / JOB_LOG).read_text()
    assert log.count("attempt on") >= 2
    assert "resumed from the checkpoint of epoch" in log


def test_a_transient_error_is_retried_and_without_retries_the_job_fails(batch, tmp_path, register):
    # Workers are threads of this process here, so a plugin registered by the test runs in
    # the jobs: it raises an OSError at the end of the first epoch of the first attempt.
    from distributed import LocalCluster

    from medadapt.engine import hookimpl

    class Flaky:
        attempts = 0

        @hookimpl
        def medadapt_epoch_end(self, run, epoch, metrics):
            if run.job == "train" and epoch == 1 and Flaky.attempts < 1:
                Flaky.attempts += 1
                raise OSError("the shared disk went away for a moment")

    register(Flaky(), "flaky")
    jobs = read_jobs_file(batch())[:1]
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        retried = run_batch(jobs, tmp_path / "retried", scheduler=cluster.scheduler_address)
        assert [o.status for o in retried] == [FINISHED]
        log = (retried[0].folder / JOB_LOG).read_text()
        assert log.count("attempt on") == 2
        assert "OSError: the shared disk went away" in log
        Flaky.attempts = 0
        failed = run_batch(
            jobs, tmp_path / "no-retries", scheduler=cluster.scheduler_address, retries=0
        )
    assert [o.status for o in failed] == [FAILED]
    assert failed[0].reason.startswith("OSError: the shared disk went away for a moment")
    assert failed[0].folder.name.endswith(".partial")  # kept, to resume or to read


def test_the_local_cluster_speaks_tls_and_turns_away_a_client_without_its_certificate():
    from distributed import Client
    from distributed.security import Security

    from medadapt.engine.cluster import local_cluster

    cluster, security = local_cluster(workers=1)
    try:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        with Client(cluster, security=security) as client:
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3
            # Dask's profiler (every thread's stack every 10 ms) is off in the workers.
            profiling = client.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks)
            assert list(profiling.values()) == [False]
        with pytest.raises((OSError, TimeoutError)):
            Client(cluster.scheduler_address.replace("tls://", "tcp://"), timeout=5)
        stranger = Security.temporary()  # TLS, with a certificate of its own
        with pytest.raises((OSError, TimeoutError)):
            Client(cluster.scheduler_address, security=stranger, timeout=5)
    finally:
        cluster.close()


def _listening_ports() -> list[tuple[str, int]]:
    """The TCP ports this process and its children (the cluster's workers) listen on."""
    import psutil

    me = psutil.Process()
    pids = {me.pid} | {child.pid for child in me.children(recursive=True)}
    return sorted(
        {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids
        }
    )


def test_no_port_of_the_local_cluster_answers_a_plain_client():
    """No HTTP dashboard, no worker pages (/health, /info/call-stacks), and no comm port
    that speaks to a client without the batch's certificate."""
    import socket

    from distributed import Client

    from medadapt.engine.cluster import local_cluster

    before = set(_listening_ports())
    cluster, security = local_cluster(workers=2)
    try:
        with Client(cluster, security=security) as client:
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3
            ports = [port for port in _listening_ports() if port not in before]
            assert len(ports) >= 3  # the scheduler, and each worker and its nanny
            for host, port in ports:
                for request in (b"GET /health HTTP/1.0\r\n\r\n", b"GET /info/call-stacks\r\n"):
                    with socket.create_connection((host, port), timeout=5) as plain:
                        plain.settimeout(5)
                        plain.sendall(request)
                        try:
                            answer = plain.recv(200)
                        except (ConnectionResetError, TimeoutError):
                            answer = b""
                    assert answer == b"", f"port {port} answered {answer[:60]!r}"
            assert 8787 not in {port for _, port in ports}
    finally:
        cluster.close()


def test_an_unreachable_scheduler_is_refused_by_address(batch, tmp_path):
    import socket

    import distributed  # noqa: F401 - its defaults, before one of them is set
    from dask import config

    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with config.set({"distributed.comm.timeouts.connect": "2s"}):
        result = CliRunner().invoke(
            cli,
            ["batch", str(batch()), "--scheduler", f"tcp://127.0.0.1:{port}", "--out",
             str(tmp_path / "b")],
        )  # fmt: skip
    assert result.exit_code == ExitCode.INVALID_INPUT, result.output
    assert f"--scheduler tcp://127.0.0.1:{port}: no Dask scheduler could be reached" in (
        result.output
    )
    assert "Traceback" not in result.output
