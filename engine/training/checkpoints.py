"""What a run keeps on disk to be resumed, and when it writes it: the checkpoint (the model,
the optimiser, the schedule, the random state and the history), the best epoch's weights, and
every epoch's validation predictions.

A checkpoint is written after the first epoch, then after the first epoch that ends
:data:`CHECKPOINT_SECONDS` or more after the last write, after the last epoch, and when a run
stops or is interrupted (Ctrl-C, SIGTERM, an error). The epochs between are kept in memory
and written with the next one, so only a hard kill (SIGKILL, a power cut) loses work, and
at most that long. Written after every epoch, the model and the optimiser's state (about
130 MB for a ResNet-18) cost a short adaptation epoch the copy and the wait for the write
(9% of a DANN epoch of 4 steps on 2 cores, benchmarks/epoch_profile.py at d0a5890), and the
write itself (serialising and writing 130 MB, about a quarter of a second of one core) ran
beside the next epoch's training on the same cores.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.models.model import atomic_file, save_weights, torch_bytes
from medadapt.engine.models.weights import torch_load_weights_only, unsafe_contents
from medadapt.engine.output.atomic import BackgroundWriter

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"
#: Each epoch's predicted probabilities on the validation split, one file per epoch
#: (``epoch-001.npy``, ...), in the validation data's order: numbers only.
VALIDATION_PREDICTIONS = "validation"
#: The longest time between two checkpoints, in seconds: what a hard kill may lose.
CHECKPOINT_SECONDS = 60.0


@dataclass
class _Unwritten:
    """Finished epochs not yet written: the last one's checkpoint, every one's validation
    predictions, and the best weights if one of them improved."""

    payload: dict[str, Any]
    predictions: list[tuple[int, np.ndarray]]
    best: dict[str, Tensor] | None


class Checkpoints:
    """A run folder's checkpoint, best weights and validation predictions (rank 0's).

    Args:
        out_dir: the run folder.
        label: what log lines start with (the run's name).
        seconds: the longest time between two checkpoints; 0: after every epoch.
    """

    def __init__(self, out_dir: Path, label: str = "", seconds: float = CHECKPOINT_SECONDS):
        self.out_dir = out_dir
        self.path = out_dir / CHECKPOINT
        self.label = label
        self.seconds = seconds
        self._writer = BackgroundWriter()
        self._unwritten: _Unwritten | None = None
        self._written = -math.inf  # when the last checkpoint was submitted (time.monotonic)

    def keep(self, payload: dict[str, Any], probabilities: np.ndarray, improved: bool) -> None:
        """Keep a finished epoch until the next write: ``payload``, the checkpoint's
        contents (copies: training goes on), holds its ``epoch`` and ``model``; the model is
        the best weights when the epoch ``improved``."""
        before = self._unwritten
        predictions = [*(before.predictions if before else []), (payload["epoch"], probabilities)]
        best = payload["model"] if improved else (before.best if before else None)
        self._unwritten = _Unwritten(payload, predictions, best)

    def due(self, last: bool) -> bool:
        """Whether the epochs kept are to be written now: at the ``last`` epoch, or when
        the time since the last write has reached the interval (at once, the first time)."""
        return last or time.monotonic() - self._written >= self.seconds

    def write(self, background: bool = False) -> None:
        """Write the epochs kept: their validation predictions, the best weights when one of
        them improved, then the last one's checkpoint (so that a resumed run has the
        predictions of every epoch it does not repeat). In the background while the next
        epoch trains; or now, when a run is interrupted (what goes wrong is then logged, and
        the interruption goes on)."""
        unwritten, self._unwritten = self._unwritten, None
        if unwritten is None:
            return
        folder = self.out_dir / VALIDATION_PREDICTIONS

        def write() -> None:
            folder.mkdir(exist_ok=True)
            for epoch, probabilities in unwritten.predictions:
                np.save(folder / f"epoch-{epoch:03d}.npy", probabilities.astype(np.float32))
            if unwritten.best is not None:
                save_weights(unwritten.best, self.out_dir / BEST)
            data = torch_bytes(unwritten.payload)
            with atomic_file(self.path) as temporary:
                temporary.write_bytes(data)

        if background:
            self._written = time.monotonic()
            self._writer.submit(write)
            return
        try:
            self._writer.wait()
            write()
        except Exception as exc:
            log.warning(
                "%sthe epochs finished since the last checkpoint could not be written: %s",
                self.label,
                exc,
            )

    def wait(self) -> None:
        """Until the writes submitted are on disk (re-raises what went wrong)."""
        self._writer.wait()

    def close(self) -> None:
        """Wait for the last write and stop the writer's thread."""
        self._writer.close()

    def read(self) -> dict[str, Any]:
        """The checkpoint's contents.

        Raises:
            InvalidInputError: it cannot be read as a medadapt checkpoint.
        """
        try:
            return torch_load_weights_only(self.path)
        except Exception:
            raise InvalidInputError(
                f"{self.path}: the checkpoint cannot be read: {unsafe_contents(self.path)}. It "
                "was not written by medadapt as it is; remove it (and the run folder's other "
                "files) to train from the start"
            ) from None


def validation_predictions(run_dir: Path) -> dict[int, np.ndarray]:
    """Every epoch's validation probabilities a run kept, by epoch (from 1)."""
    folder = run_dir / VALIDATION_PREDICTIONS
    return {
        int(path.stem.removeprefix("epoch-")): np.load(path)
        for path in sorted(folder.glob("epoch-*.npy"))
    }
