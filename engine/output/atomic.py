"""Writing a file or a folder so that a reader never sees half of it.

The content goes to a temporary beside the target (``.NAME.<random>.tmp``), which takes its
place only when the writing ended without error; on an error or an interruption it is
removed. A writer that is killed (``kill -9``, a power cut) cannot remove its temporary, so
each writer holds a lock on its own (``flock``, released by the kernel when the process
dies), and the next writer of the same target removes every temporary nobody holds.

A temporary that cannot be made (a read-only or forbidden folder) is reported by the
target's name, the one the user asked for, never by the temporary's.

:class:`BackgroundWriter` does such writes on a thread of its own, so that the training loop
goes on while an epoch's checkpoint is written.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # not on Windows: there, abandoned temporaries are left alone
    fcntl = None  # type: ignore[assignment]

# The process's umask, read once (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_file(path: Path, mode: int | None = None) -> Iterator[Path]:
    """A temporary file beside ``path`` to write, put in its place only when the block ends
    without error; removed on any error or interruption (Ctrl-C, SIGTERM).

    Args:
        mode: the file's permissions; by default those of any new file (the umask's).
    """
    remove_abandoned(path)
    try:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    temporary = Path(name)
    try:
        _lock(handle)
        yield temporary
        # mkstemp makes the file readable by its owner alone; the file in place gets the
        # permissions any new file would (a deployment account may need to read a model).
        os.chmod(temporary, 0o666 & ~_UMASK if mode is None else mode)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        named = _named_as_target(exc, temporary, path)  # the file the user asked for
        if named is exc:
            raise
        raise named from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        os.close(handle)


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill, put in its place (replacing the folder
    there) only when the block ends without error; removed otherwise."""
    remove_abandoned(path)
    try:
        temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    handle = os.open(temporary, os.O_RDONLY)
    try:
        _lock(handle)
        os.chmod(temporary, 0o777 & ~_UMASK)  # mkdtemp's folder is its owner's alone
        yield temporary
        if path.exists():
            shutil.rmtree(path)
        os.replace(temporary, path)
    except OSError as exc:
        named = _named_as_target(exc, temporary, path)
        if named is exc:
            raise
        raise named from exc
    finally:
        os.close(handle)
        shutil.rmtree(temporary, ignore_errors=True)


def remove_abandoned(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` that no living writer holds (those of a killed
    run); returns what was removed.

    Example:
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / ".model.ts.k3j9.tmp").write_bytes(b"half a file")
        >>> [p.name for p in remove_abandoned(folder / "model.ts")]
        ['.model.ts.k3j9.tmp']
    """
    if fcntl is None:
        return []
    removed = []
    pattern = str(path.parent / f".{glob.escape(path.name)}.*.tmp")
    for name in glob.glob(pattern, include_hidden=True):
        candidate = Path(name)
        try:
            handle = os.open(candidate, os.O_RDONLY)
        except OSError:
            continue  # gone already, or not ours to read
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)
            removed.append(candidate)
        except OSError:
            continue  # a writer is at work on it
        finally:
            os.close(handle)
    return removed


def _named_as_target(exc: OSError, temporary: Path, path: Path) -> OSError:
    """``exc`` naming ``path`` (or the file inside it) where it named the temporary."""
    name = exc.filename
    if name is None or str(name) == str(temporary):
        return OSError(exc.errno, exc.strerror, str(path))
    if str(name).startswith(f"{temporary}{os.sep}"):
        return OSError(exc.errno, exc.strerror, str(path) + str(name)[len(str(temporary)) :])
    return exc


def _lock(handle: int) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):  # a filesystem without locks: nothing is cleaned
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


class BackgroundWriter:
    """Writes files on one background thread; :meth:`wait` re-raises what went wrong."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medadapt-writer")
        self._pending: Future[None] | None = None

    def submit(self, write: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._pool.submit(write)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        """Wait for the last write and stop the thread (a failed write is logged, not raised:
        :meth:`wait` raised it already on the way out of the loop)."""
        try:
            self.wait()
        except Exception:
            log.debug("a background write failed", exc_info=True)
        self._pool.shutdown(wait=True)
