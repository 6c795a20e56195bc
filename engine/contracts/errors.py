"""Exit codes and the errors that carry them to the command line."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What a ``medadapt`` command's exit status means.

    Scripts and schedulers may rely on these numbers; they only ever gain new members.
    """

    #: The command did what was asked.
    OK = 0
    #: The command ran, and what it measured or found did not pass (an acceptance gate not
    #: met, a folder with no usable series).
    NOT_PASSED = 1
    #: The command line, a profile or an input file is invalid; nothing was run.
    INVALID_INPUT = 2
    #: The installed plugins contradict each other (two provide the same component name) or
    #: a plugin's component breaks its contract.
    PLUGIN_ERROR = 3
    #: An unexpected error: a bug in medadapt or in a plugin. The traceback is printed.
    INTERNAL_ERROR = 4
    #: The command ran and wrote its report, but could not judge: too few test patients, or
    #: a criterion that could not be measured (``validate``). Never taken for a pass.
    NO_VERDICT = 5
    #: A batch ran to the end but some of its jobs failed (``batch``); the others finished
    #: and batch.json says which failed and why.
    SOME_JOBS_FAILED = 6
    #: The user interrupted the command (Ctrl-C); finished work is kept.
    INTERRUPTED = 130
    #: The command was asked to stop (SIGTERM: ``kill``, a scheduler's time limit);
    #: finished work is kept and temporary files are removed, as for Ctrl-C.
    TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that it unwinds as for Ctrl-C."""


class MedadaptError(Exception):
    """An error the user can act on; the command line prints its message and exits."""

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR


class InvalidInputError(MedadaptError):
    """Input (a profile, a file, a parameter) is not what was expected."""

    exit_code = ExitCode.INVALID_INPUT


class PluginError(MedadaptError):
    """The installed plugins cannot be used together as they are."""

    exit_code = ExitCode.PLUGIN_ERROR
