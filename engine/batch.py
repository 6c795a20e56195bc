"""Batch re-adaptation: many independent jobs on a Dask cluster, surviving failures.

A job carries one model to one site: optionally train the source model, then ``adapt``, then
``validate`` (the acceptance verdict). Jobs run as Dask tasks, on a local cluster of worker
processes by default or on an existing cluster (``--scheduler``); every worker must see the
batch folder (a shared filesystem on a real cluster).

- **Idempotent.** A job's id is a hash of what determines its result: the profiles' content,
  the source model's weights hash, the method, the seeds and the medadapt version. A
  finished job is a folder ``jobs/<id>/`` holding ``job.json``; running the batch again
  skips it.
- **Atomic.** A job works in ``jobs/<id>.partial/`` and is renamed to ``jobs/<id>/`` only when
  complete, so a half-written folder is never taken for a finished one.
- **Resumable.** A job that dies (a killed worker, a power cut) leaves its partial folder; the
  next attempt continues from the last checkpoint of each run (training and adaptation
  resume epoch by epoch; finished adaptation runs are reused) and says so in its log.
- **Isolated.** A job with bad input (a broken profile, unreadable data) fails with its reason
  and is not retried; other errors are retried up to ``retries`` times; either way the
  other jobs go on. A worker that dies takes its job to another worker (Dask reschedules
  it), where it resumes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from medadapt.engine.cluster import local_cluster
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.data.pseudonym import data_paths
from medadapt.engine.models.model import CARD, read_card, write_json_atomic
from medadapt.engine.models.runfolder import FolderInUseError, Provenance, claim_folder
from medadapt.engine.output.text import read_json_file, slug

JOB_JSON = "job.json"
JOB_LOG = "job.log"
STATUS_JSON = "status.json"
BATCH_JSON = "batch.json"
#: Job states in batch.json.
FINISHED, SKIPPED, FAILED = "finished", "finished earlier", "failed"


class JobSpec(BaseModel):
    """One job of a jobs file (after the file's defaults are applied)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = Field(default=None, description="shown in the progress table")
    profile: Path = Field(description="the target site's profile")
    source_model: Path | None = Field(
        default=None, alias="from", description="the source model folder"
    )
    train: Path | None = Field(
        default=None, description="instead of from: a source profile to train the model with"
    )
    source_profile: Path | None = Field(
        default=None, description="the source site's profile, for methods that need its data"
    )
    method: str | None = Field(default=None, description="a method or auto (profile's default)")
    seeds: PositiveInt = 1


@dataclass(frozen=True)
class Job:
    """A job ready to run: its spec with absolute paths, and its id."""

    spec: JobSpec
    id: str
    name: str


@dataclass
class JobOutcome:
    """What became of one job."""

    job: Job
    status: str
    folder: Path
    reason: str | None = None
    result: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        spec = self.job.spec
        return {
            "id": self.job.id,
            "name": self.job.name,
            "profile": str(spec.profile),
            "method": spec.method or "profile default",
            "seeds": spec.seeds,
            "status": self.status,
            "folder": str(self.folder),
            "reason": self.reason,
            **self.result,
        }


# --- reading jobs --------------------------------------------------------------------------


def read_jobs_file(path: Path) -> list[Job]:
    """The jobs of a jobs file: ``defaults`` (optional) and ``jobs`` (a list).

    Paths are relative to the file's folder.

    Raises:
        InvalidInputError: the file is not YAML of that shape, or a job is malformed.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"{path}: cannot read the jobs file ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("jobs"), list):
        raise InvalidInputError(f"{path}: expected a mapping with a 'jobs' list")
    unknown = set(document) - {"defaults", "jobs"}
    if unknown:
        raise InvalidInputError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: defaults, jobs"
        )
    defaults = document.get("defaults") or {}
    jobs = []
    for number, entry in enumerate(document["jobs"], start=1):
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{path}: jobs[{number}] must be a mapping")
        try:
            spec = JobSpec.model_validate({**defaults, **entry})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidInputError(f"{path}: jobs[{number}]: {problems}") from None
        jobs.append(make_job(_absolute(spec, path.parent)))
    return jobs


def jobs_for_profiles(
    profiles: Sequence[Path],
    source_model: Path,
    method: str | None,
    seeds: int = 1,
    source_profile: Path | None = None,
) -> list[Job]:
    """The common case: the same source model carried to each of several sites."""
    return [
        make_job(
            _absolute(
                JobSpec(
                    profile=profile,
                    source_model=source_model,
                    method=method,
                    seeds=seeds,
                    source_profile=source_profile,
                ),
                Path.cwd(),
            )
        )
        for profile in profiles
    ]


def _absolute(spec: JobSpec, base: Path) -> JobSpec:
    def resolve(value: Path | None) -> Path | None:
        return None if value is None else (base / value).resolve()

    return spec.model_copy(
        update={
            "profile": resolve(spec.profile),
            "source_model": resolve(spec.source_model),
            "train": resolve(spec.train),
            "source_profile": resolve(spec.source_profile),
        }
    )


def make_job(spec: JobSpec) -> Job:
    """The job with its id: a hash of everything that determines its result.

    Files that cannot be read count by their path, so a broken job still has an id (and
    fails when it runs, with the reason).
    """
    if (spec.source_model is None) == (spec.train is None):
        raise InvalidInputError(
            f"the job for {spec.profile} needs exactly one of 'from' (a source model folder) "
            "and 'train' (a source profile to train it with)"
        )
    digest = hashlib.sha256()
    for part in (
        _content(spec.profile),
        _model_hash(spec.source_model) if spec.source_model else "no model",
        _content(spec.train) if spec.train else "no training",
        _content(spec.source_profile) if spec.source_profile else "no source profile",
        spec.method or "profile default",
        str(spec.seeds),
        metadata.version("medadapt"),
    ):
        digest.update(part.encode() + b"\0")
    name = spec.name or spec.profile.stem
    return Job(spec=spec, id=f"{slug(name, 'job', 40)}-{digest.hexdigest()[:12]}", name=name)


def _content(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return f"unreadable {path}"


def _model_hash(folder: Path) -> str:
    try:
        return str(read_card(folder / CARD).weights_sha256)
    except (OSError, InvalidInputError):
        return f"unreadable {folder}"


# --- one job, on a worker ------------------------------------------------------------------


def run_job(
    job: Job, batch_dir: Path, torch_threads: int | None = None, device: str | None = None
) -> dict[str, Any]:
    """Run one job to the end in its folder; runs on a Dask worker (or in this process).

    ``device`` (``batch --device``) overrides every profile's ``training.device``; it is not
    part of the job's identity, so a job finished on one device is not run again on another.

    Returns:
        ``{"status": ..., "reason": ..., "result": {...}}``. Bad input is a returned failure
        (retrying cannot help); any other error is raised, so Dask retries the job.
    """
    final = batch_dir / "jobs" / job.id
    if (final / JOB_JSON).is_file():
        return {"status": SKIPPED, "reason": None, "result": _read(final / JOB_JSON)["result"]}
    work = final.with_name(job.id + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    _treat_jobs_data_as_data([job])
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    with _job_log(work / JOB_LOG) as log:
        log.info("attempt on %s (process %d)", socket.gethostname(), os.getpid())
        try:
            result = _steps(job, work, log, device)
        except FolderInUseError:
            log.error("error, to be retried:\n%s", traceback.format_exc())
            raise  # an earlier attempt's lock, perhaps of a worker that died: try again
        except InvalidInputError as exc:
            log.error("failed: %s", exc)
            _status(work, "failed", str(exc))
            return {"status": FAILED, "reason": data_paths(str(exc)), "result": {}}
        except BaseException:
            log.error("error, to be retried:\n%s", traceback.format_exc())
            raise
        write_json_atomic(
            work / JOB_JSON, {"job": job.spec.model_dump(mode="json"), "result": result}
        )
        _status(work, "finished")
        log.info("finished")
    if final.exists():  # an earlier attempt elsewhere finished first: keep one
        shutil.rmtree(work, ignore_errors=True)
    else:
        os.replace(work, final)
    return {"status": FINISHED, "reason": None, "result": result}


def _steps(job: Job, work: Path, log: logging.Logger, device: str | None) -> dict[str, Any]:
    from medadapt.engine.adaptation import adapt
    from medadapt.engine.contracts.host import get_plugin_host
    from medadapt.engine.profile import load_profile
    from medadapt.engine.training.job import train
    from medadapt.engine.validation.job import validate

    spec = job.spec
    host = get_plugin_host()
    registry = host.registry()
    target = load_profile(spec.profile, registry).on_device(device)
    source = load_profile(spec.source_profile, registry) if spec.source_profile else None
    source_model = spec.source_model
    if spec.train is not None:
        trained_at = load_profile(spec.train, registry).on_device(device)
        folder = work / "train"
        if (folder / "model" / "card.json").is_file() and (folder / "run.json").is_file():
            log.info("source model already trained in an earlier attempt")
        else:
            _status(work, "training the source model")
            resume = (folder / "checkpoint.pt").is_file()
            train(trained_at, registry, host, folder, resume=resume, quiet=True)
        source_model = folder / "model"
    assert source_model is not None
    _status(work, f"adapting ({spec.method or 'profile default'})")
    adapted = adapt(
        target,
        registry,
        host,
        source_model,
        work / "adapt",
        method=spec.method,
        source_profile=source,
        seeds=spec.seeds,
        quiet=True,
    )
    _status(work, "validating")
    report = validate(
        target, registry, host, adapted.model_dir, work / "validate", source_model
    ).report
    measured = report["results"]["model"]
    return {
        "kept": adapted.kept,
        "decision": adapted.decision.statement,
        "decision_evidence": adapted.decision.evidence,
        "auroc": measured["auroc"],
        "baseline_auroc": report["results"]["baseline"]["auroc"],
        "sensitivity": measured["sensitivity"],
        "specificity": measured["specificity"],
        "verdict": report["acceptance"]["verdict"],
        "failed_criteria": [
            c["name"] for c in report["acceptance"]["criteria"] if c["status"] == "fail"
        ],
    }


@contextmanager
def _job_log(path: Path) -> Iterator[logging.Logger]:
    """medadapt's log records of this job, appended to its job.log (attempts accumulate)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_ScrubbingFormatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("medadapt")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield logging.getLogger("medadapt.batch")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


class _ScrubbingFormatter(logging.Formatter):
    """Log lines (tracebacks included) with every data path pseudonymised: job.log
    persists, and an export's folders are often named by patient."""

    def format(self, record: logging.LogRecord) -> str:
        return data_paths(super().format(record))


def _status(work: Path, phase: str, reason: str | None = None) -> None:
    write_json_atomic(
        work / STATUS_JSON,
        {"phase": phase, "reason": reason, "at": datetime.datetime.now().isoformat()},
    )


def _read(path: Path) -> dict[str, Any]:
    return dict(read_json_file(path, "a batch job's record"))


# --- the batch, on the client ----------------------------------------------------------------


def run_batch(
    jobs: Sequence[Job],
    batch_dir: Path,
    workers: int = 2,
    scheduler: str | None = None,
    retries: int = 1,
    on_update: Callable[[Mapping[str, str]], None] | None = None,
    device: str | None = None,
) -> list[JobOutcome]:
    """Run every job on Dask; finished ones are skipped. Writes BATCH_DIR/batch.json.

    Args:
        jobs: the jobs; duplicates (same id) run once.
        batch_dir: where jobs/ and batch.json go; every worker must see it.
        workers: worker processes of the local cluster (ignored with ``scheduler``).
        scheduler: the address of an existing Dask scheduler.
        retries: how many more times a job that raised is tried.
        on_update: called about twice a second with each job's current phase, by job id.
        device: where every job computes, overriding its profiles' ``training.device``.

    The batch folder is claimed first (see :mod:`medadapt.engine.models.runfolder`): one batch at
    a time, and only a folder made by ``batch`` (a new batch may add jobs to it).

    Raises:
        InvalidInputError: the folder is not writable, another batch runs in it, or it was
            made by something else.
    """
    batch_dir = batch_dir.resolve()
    with claim_folder(batch_dir, Provenance("batch", {})):
        return _run_batch(jobs, batch_dir, workers, scheduler, retries, on_update, device)


def _run_batch(
    jobs: Sequence[Job],
    batch_dir: Path,
    workers: int,
    scheduler: str | None,
    retries: int,
    on_update: Callable[[Mapping[str, str]], None] | None,
    device: str | None,
) -> list[JobOutcome]:
    from dask import config
    from distributed import Client, as_completed

    (batch_dir / "jobs").mkdir(parents=True, exist_ok=True)
    unique = list({job.id: job for job in jobs}.values())
    _treat_jobs_data_as_data(unique)
    outcomes: dict[str, JobOutcome] = {}
    todo = []
    for job in unique:
        final = batch_dir / "jobs" / job.id
        if (final / JOB_JSON).is_file():
            outcomes[job.id] = JobOutcome(
                job, SKIPPED, final, result=_read(final / JOB_JSON)["result"]
            )
        else:
            todo.append(job)
    cluster = None
    threads = None
    settings = {
        "distributed.scheduler.allowed-failures": max(3, retries + 2),
        # Dask's workers start with MALLOC_TRIM_THRESHOLD_=65536, which made PyTorch's
        # training steps 1.6 times slower in our measurements (every freed tensor is
        # trimmed back to the system); workers of a local cluster keep glibc's default.
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    }
    with config.set(settings):
        if todo:
            security = None
            if scheduler is None:
                cluster, security = local_cluster(workers)
                threads = max(1, (os.cpu_count() or 1) // workers)
            client = (
                Client(cluster, security=security)
                if cluster is not None
                else _connect(str(scheduler))
            )
            try:
                futures = {
                    client.submit(
                        run_job, job, batch_dir, threads, device, key=f"medadapt-{job.id}",
                        retries=retries, pure=False,
                    ): job
                    for job in todo
                }  # fmt: skip
                pending = as_completed(futures, with_results=False)
                remaining = set(futures)
                while remaining:
                    for future in pending.next_batch(block=False):
                        remaining.discard(future)
                        job = futures[future]
                        outcomes[job.id] = _outcome(job, future, batch_dir)
                    if on_update:
                        on_update(_phases(unique, outcomes, batch_dir))
                    if remaining:
                        time.sleep(0.5)
            finally:
                client.close()
                if cluster is not None:
                    cluster.close()
    ordered = [outcomes[job.id] for job in unique]
    if on_update:
        on_update(_phases(unique, outcomes, batch_dir))
    write_json_atomic(
        batch_dir / BATCH_JSON,
        {
            "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
            "jobs": [o.as_dict() for o in ordered],
            "counts": {s: sum(o.status == s for o in ordered) for s in (FINISHED, SKIPPED, FAILED)},
        },
    )
    return ordered


def _treat_jobs_data_as_data(jobs: Sequence[Job]) -> None:
    """The data folders that every job's profiles name, read from their YAML (a profile
    that does not validate is read too: its error may name its folder), so that what this
    process writes (job.log, status, batch.json) names their files by pseudonym."""
    from medadapt.engine.data.samples import treat_as_data_folders

    for job in jobs:
        for path in (job.spec.profile, job.spec.source_profile, job.spec.train):
            try:
                document = yaml.safe_load(path.read_text()) if path else None
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue  # the job fails with its reason when it runs
            data = document.get("data") if isinstance(document, dict) else None
            params = data.get("params") if isinstance(data, dict) else None
            if isinstance(params, dict) and path is not None:
                label_file = data.get("label_file")
                label_file = label_file if isinstance(label_file, str) else None
                treat_as_data_folders(params, path.parent, label_file)


def _connect(scheduler: str) -> Any:
    """A client of the scheduler at ``scheduler``; a clear refusal where none answers."""
    from dask import config
    from distributed import Client

    try:
        return Client(scheduler)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        waited = config.get("distributed.comm.timeouts.connect")
        raise InvalidInputError(
            f"--scheduler {scheduler}: no Dask scheduler could be reached there "
            f"({type(exc).__name__}: {exc}; waited up to {waited}). Check the address "
            "(tcp://HOST:PORT or tls://HOST:PORT), that the scheduler runs and that this "
            "machine may reach it; without --scheduler, batch starts a cluster of its own. "
            "Nothing was run; finished jobs are kept"
        ) from None


def _outcome(job: Job, future: Any, batch_dir: Path) -> JobOutcome:
    final = batch_dir / "jobs" / job.id
    partial = final.with_name(job.id + ".partial")
    if future.status == "error":
        exc = future.exception()
        reason = data_paths(f"{type(exc).__name__}: {exc}".strip())
        return JobOutcome(
            job, FAILED, partial, reason=f"{reason} (after retries; see {partial / JOB_LOG})"
        )
    answer = future.result()
    folder = final if answer["status"] in (FINISHED, SKIPPED) else partial
    return JobOutcome(job, answer["status"], folder, answer["reason"], answer["result"])


def _phases(
    jobs: Sequence[Job], outcomes: Mapping[str, JobOutcome], batch_dir: Path
) -> dict[str, str]:
    phases = {}
    for job in jobs:
        if job.id in outcomes:
            phases[job.id] = outcomes[job.id].status
            continue
        status = batch_dir / "jobs" / f"{job.id}.partial" / STATUS_JSON
        try:
            phases[job.id] = str(json.loads(status.read_text())["phase"])
        except (OSError, ValueError, KeyError):
            phases[job.id] = "waiting"
    return phases
