"""A job's claim on its output folder: what made it, who writes in it now, and when it may be
written over.

Every job (``train``, ``adapt``, ``validate``, ``shift``, ``batch``) claims its folder before
any work:

- **Writable, or said at once.** The folder is created and a lock file written in it; a
  folder that cannot be written is refused before the data are scanned.
- **One job at a time.** ``.medadapt.lock`` names the process that holds the folder (host,
  process id and its start time, the job, the command). A second job is refused with who
  holds it. A lock whose process no longer runs (killed, or its machine's process id reused)
  is stale and taken over with a warning; a lock held on another machine is stale once its
  holder has stopped refreshing it for :data:`STALE_AFTER` seconds.
- **Provenance.** ``provenance.json`` records what made the folder: the job, the hashes of
  its inputs (profiles, models), its settings (seed, method) and the command. A job refuses
  to write into a folder made by something else (another job, other inputs, or not by
  medadapt at all), to resume with other inputs, and to write over its own inputs, naming
  both, unless it is told to overwrite. With ``overwrite`` it starts afresh: it reuses
  nothing the folder held.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medadapt.engine.contracts.errors import InvalidInputError

if TYPE_CHECKING:
    from medadapt.engine.profile import Profile

log = logging.getLogger(__name__)

PROVENANCE = "provenance.json"
LOCK = ".medadapt.lock"
#: How often a holder refreshes its lock, and after how long an unrefreshed lock held on
#: another machine (whose processes cannot be asked) counts as stale, in seconds.
REFRESH_EVERY = 15.0
STALE_AFTER = 120.0


class FolderInUseError(InvalidInputError):
    """Another job holds the folder (its lock is not stale)."""


@dataclass(frozen=True)
class Provenance:
    """What makes a job's folder: compared field by field with what made it before.

    Attributes:
        job: ``train``, ``adapt``, ``validate``, ``shift`` or ``batch``.
        inputs: each input's name and a hash of its content (``profile``: the profile's
            settings; ``source model``: its weights), so that a renamed copy is the same
            input and an edited one is not.
        settings: what else decides the result (seed, method, seeds).
        describe: a few words per input for messages (the site's name, the file); not
            compared.
    """

    job: str
    inputs: Mapping[str, str | None]
    settings: Mapping[str, Any] = field(default_factory=dict)
    describe: Mapping[str, str] = field(default_factory=dict)

    def as_json(self, command: str) -> dict[str, Any]:
        return {
            "job": self.job,
            "inputs": dict(self.inputs),
            "settings": dict(self.settings),
            "describe": dict(self.describe),
            "command": command,
            "medadapt": _version(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def differences(self, recorded: Mapping[str, Any]) -> list[str]:
        """What differs from a recorded provenance, in words (empty when the same)."""
        if recorded.get("job") != self.job:
            return [f"it was made by `{recorded.get('job')}`, this is `{self.job}`"]
        found = []
        for part in ("inputs", "settings"):
            then: Mapping[str, Any] = recorded.get(part) or {}
            now: Mapping[str, Any] = getattr(self, part)
            for key in sorted(set(then) | set(now)):
                if then.get(key) != now.get(key):
                    found.append(f"{key}: {_short(then.get(key))} then, {_short(now.get(key))} now")
        return found

    def text(self) -> str:
        return _job_text(self.job, self.describe, self.settings)


def recorded_text(recorded: Mapping[str, Any]) -> str:
    """A recorded provenance in words: the job, its inputs, its command and when."""
    words = _job_text(recorded.get("job"), recorded.get("describe"), recorded.get("settings"))
    return f"{words}, command `{recorded.get('command')}` at {recorded.get('created')}"


def _job_text(job: object, describe: Mapping[str, Any] | None, settings: Any) -> str:
    parts = [
        f"{key} {value}" for part in (describe, settings) for key, value in (part or {}).items()
    ]
    return f"`{job}`" + (f" ({', '.join(parts)})" if parts else "")


@dataclass(frozen=True)
class Claim:
    """A job's hold on its folder.

    Attributes:
        folder: the folder.
        fresh: the job must start afresh (``overwrite`` was given): reuse and resume
            nothing found in the folder.
        existed: the folder held this same job's earlier run (same inputs), to be resumed
            or reused unless ``fresh``.
    """

    folder: Path
    fresh: bool
    existed: bool


@contextmanager
def claim_folder(
    folder: Path,
    provenance: Provenance,
    *,
    overwrite: bool = False,
    reads: Sequence[Path] = (),
    wait: float = 0.0,
    main: bool | None = None,
) -> Iterator[Claim]:
    """Hold ``folder`` for one job: writable, locked, and made by this job's inputs.

    Args:
        folder: the job's output folder (created when missing).
        provenance: what this job is and what it reads.
        overwrite: write into a folder made by something else, or over the job's own
            inputs, starting afresh.
        reads: the files and folders the job reads (a model folder, a profile, the data),
            so that it never writes over one of them unasked.
        wait: seconds to wait for a lock held by another live process before refusing.
        main: whether this process writes (rank 0 under torchrun); the other ranks neither
            lock nor record anything. Default: from the ``RANK`` environment variable.

    Raises:
        InvalidInputError: the folder cannot be written, another job holds it, it was made
            by something else, or it holds one of the job's inputs.
    """
    folder = Path(folder)
    if main is None:
        main = int(os.environ.get("RANK", "0")) == 0
    if not main:
        yield Claim(folder, fresh=overwrite, existed=(folder / PROVENANCE).is_file())
        return
    _refuse_own_inputs(folder, reads, overwrite)
    _make_writable(folder)
    lock = _Lock(folder, provenance.job)
    lock.acquire(wait)
    try:
        existed = _check_provenance(folder, provenance, overwrite)
        from medadapt.engine.models.model import write_json_atomic

        write_json_atomic(folder / PROVENANCE, provenance.as_json(command_line()))
        yield Claim(folder, fresh=overwrite, existed=existed)
    finally:
        lock.release()


def profile_reads(profile: Profile) -> list[Path]:
    """The files and folders a profile's data section points at (its root, its label file)."""
    if profile.data is None:
        return []
    base = profile.base_dir or Path.cwd()
    candidates = [profile.data.label_file, *profile.data.params.values()]
    paths = [base / value for value in candidates if isinstance(value, str | Path) and value]
    return [path for path in paths if path.exists()]


def json_hash(data: Any) -> str:
    """The SHA-256 of a JSON document's content (keys sorted)."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def remove_outputs(folder: Path, names: Sequence[str]) -> None:
    """Remove a job's own outputs from its folder, before it starts afresh over them."""
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def command_line() -> str:
    """This process's ``medadapt`` command as it was typed, or ``the Python API`` when a
    program called the jobs itself (its command line is its own business, and is not
    recorded)."""
    argv = list(sys.argv)
    entry = Path(__file__).parent.parent / "__main__.py"  # python -m medadapt.engine
    if argv and (Path(argv[0]).name == "medadapt" or Path(argv[0]) == entry):
        return shlex.join(["medadapt", *argv[1:]])
    return "the Python API"


def _refuse_own_inputs(folder: Path, reads: Sequence[Path], overwrite: bool) -> None:
    target = folder.resolve()
    for path in reads:
        read = Path(path).resolve()
        if read == target or target in read.parents:
            if overwrite:
                log.warning(
                    "%s holds this job's input %s; writing over it (--overwrite)", folder, path
                )
                continue
            raise InvalidInputError(
                f"{folder} holds this job's own input {path}: writing there would replace it. "
                "Choose another --out, or add --overwrite to write over it"
            )


def _make_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(
            f"{folder}: cannot create the output folder ({exc.strerror or exc}); choose "
            "another --out"
        ) from None
    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not a folder; choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInputError(
            f"{folder}: the output folder is not writable; choose another --out or make it writable"
        )


def _check_provenance(folder: Path, provenance: Provenance, overwrite: bool) -> bool:
    """Whether ``folder`` holds this job's earlier run; refuses another's unless overwriting."""
    recorded_file = folder / PROVENANCE
    others = sorted(p.name for p in folder.iterdir() if p.name not in {LOCK, PROVENANCE})
    if not others:
        return False  # new, empty, or left by a job that stopped before writing anything
    if recorded_file.is_file():
        try:
            recorded = json.loads(recorded_file.read_text())
            if not isinstance(recorded, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            recorded = {"job": f"(unreadable {PROVENANCE}: {exc})"}
        differences = provenance.differences(recorded)
        if not differences:
            return True
        if overwrite:
            log.warning(
                "%s held %s; starting afresh over it (--overwrite)", folder, recorded_text(recorded)
            )
            return False
        other_job = recorded.get("job") != provenance.job
        raise InvalidInputError(
            f"{folder} was made by {recorded_text(recorded)}; this is {provenance.text()}. "
            + ("" if other_job else f"What differs: {'; '.join(differences)}. ")
            + "Choose another --out, or add --overwrite to start afresh there (what it holds "
            "is then written over)"
        )
    if overwrite:
        log.warning(
            "%s held files medadapt did not record; writing over them (--overwrite)", folder
        )
        return False
    shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
    raise InvalidInputError(
        f"{folder} is not empty ({shown}) and has no {PROVENANCE}: it was not made by this "
        f"job (or by a medadapt older than its run-folder records), and this is "
        f"{provenance.text()}. Choose an empty or new --out, or add --overwrite to write there"
    )


class _Lock:
    """``folder/.medadapt.lock``, created exclusively, refreshed while held."""

    def __init__(self, folder: Path, job: str) -> None:
        self.path = folder / LOCK
        self.job = job
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def acquire(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            if self._try_create():
                break
            holder = _read_lock(self.path)
            stale = _stale_because(holder, self.path)
            if stale:
                log.warning("%s: %s; taking the folder over", self.path.parent, stale)
                self.path.unlink(missing_ok=True)
                continue
            if time.monotonic() >= deadline:
                raise FolderInUseError(
                    f"{self.path.parent} is in use by another job: {_holder_text(holder)}. "
                    f"Wait for it to finish, or choose another --out (if that process is "
                    f"surely gone, delete {self.path})"
                )
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        self._refresher = threading.Thread(target=self._refresh, daemon=True)
        self._refresher.start()

    def release(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)
        holder = _read_lock(self.path)
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def _try_create(self) -> bool:
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_started": _process_start(os.getpid()),
            "job": self.job,
            "command": command_line(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        try:
            handle = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise InvalidInputError(
                f"{self.path.parent}: the output folder is not writable ({exc.strerror or exc}); "
                "choose another --out"
            ) from None
        with os.fdopen(handle, "w") as stream:
            json.dump(record, stream)
        return True

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            try:
                os.utime(self.path)
            except OSError:
                return


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {"unreadable": True}
    return holder if isinstance(holder, dict) else {"unreadable": True}


def _stale_because(holder: Mapping[str, Any], path: Path) -> str | None:
    """Why a lock no longer holds, or None while its holder may still be at work."""
    if not holder:
        return None  # removed meanwhile, or still being written: try again
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        pid = holder["pid"]
        if not _alive(pid):
            return f"a stale lock of {_holder_text(holder)}, which no longer runs"
        started = holder.get("process_started")
        if started is not None and _process_start(pid) not in (None, started):
            return f"a stale lock of {_holder_text(holder)}, whose process id is now another's"
        return None
    if age > STALE_AFTER:
        return (
            f"a stale lock of {_holder_text(holder)}, not refreshed for {age:.0f} s "
            f"(a holder refreshes it every {REFRESH_EVERY:.0f} s)"
        )
    return None


def _holder_text(holder: Mapping[str, Any]) -> str:
    if holder.get("unreadable"):
        return "an unreadable lock file"
    return (
        f"`{holder.get('job')}` in process {holder.get('pid')} on {holder.get('host')} since "
        f"{holder.get('since')} (command `{holder.get('command')}`)"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) no longer works on anything
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _process_start(pid: int) -> int | None:
    """When a process started (clock ticks since boot; Linux), to tell a reused id apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _short(value: Any) -> str:
    if value is None:
        return "none"
    text = str(value)
    return text[:12] + "..." if len(text) == 64 else text


def _version() -> str:
    try:
        return metadata.version("medadapt")
    except metadata.PackageNotFoundError:
        return "unknown"
