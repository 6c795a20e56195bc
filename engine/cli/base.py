"""The ``medadapt`` group: its errors and exit codes, its consoles, and the options its
commands share."""

from __future__ import annotations

import errno
import logging
import signal
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from medadapt.engine.contracts.errors import ExitCode, MedadaptError, Terminated
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.output.text import strict_json
from medadapt.engine.profile import DEVICES


def _exit_code_help() -> str:
    lines = ["\b", "Exit codes:"]
    for code in ExitCode:
        lines.append(f"  {code.value:>3}  {code.name.lower().replace('_', ' ')}")
    return "\n".join(lines)


class MedadaptGroup(click.Group):
    """A click group that turns medadapt's errors into a message and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except MedadaptError as exc:
            stderr().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            ctx.exit(exc.exit_code)
        except Terminated:
            stderr().print("terminated (SIGTERM); finished work is kept")
            ctx.exit(ExitCode.TERMINATED)
        except KeyboardInterrupt:
            stderr().print("interrupted; finished work is kept")
            ctx.exit(ExitCode.INTERRUPTED)
        except Exception as exc:
            what = refusal_text(exc)
            if what is not None:
                stderr().print(f"[bold red]error:[/] {escape(what)}", highlight=False)
                ctx.exit(ExitCode.INVALID_INPUT)
            stderr().print(traceback.format_exc(), markup=False, highlight=False)
            stderr().print(
                "[bold red]internal error:[/] this is a bug in medadapt or one of its plugins; "
                "please report it with the traceback above"
            )
            ctx.exit(ExitCode.INTERNAL_ERROR)


def refusal_text(exc: BaseException) -> str | None:
    """The message for an error that the input or the machine caused, not medadapt: any
    OSError (a full disk, a link, a permission, a host that does not answer) and a value
    that a settings model refused; None for a bug, whose traceback is shown.

    Example:
        >>> print(refusal_text(OSError(errno.ELOOP, "Too many levels of symbolic links", "m")))
        m: Too many levels of symbolic links (a symbolic link leads back to itself: mend \
the link); what was finished before is kept, so the command can be run again
    """
    from pydantic import ValidationError

    if isinstance(exc, OSError):
        return environment_error(exc)
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or exc.title}: {error['msg']} "
            f"(given {str(error.get('input'))[:60]!r})"
            for error in exc.errors()
        )
        return f"invalid {exc.title}: {problems}"
    return None


#: What to do when the machine, not medadapt, refuses a read or a write.
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "the disk is full: free space, or choose an --out on another disk",
    errno.EDQUOT: "the disk quota is used up: free space, or choose an --out elsewhere",
    errno.EROFS: "the filesystem is read-only: choose another --out",
    errno.EACCES: "no permission: give medadapt's user access, or choose another --out",
    errno.EPERM: "not permitted: give medadapt's user access, or choose another --out",
    errno.ENAMETOOLONG: "the path is too long for the filesystem: choose a shorter --out",
    errno.EIO: "the disk reported an input/output error: check the disk",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and run again",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f) or the "
    "filesystem allows: raise the limit, or choose an --out elsewhere",
    errno.ELOOP: "a symbolic link leads back to itself: mend the link",
    errno.ENOENT: "it does not exist (any more): check the path, and that nothing else "
    "moved or deleted it",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "a folder, where a file was expected: check the path",
    errno.EEXIST: "it exists already: choose another path, or remove it",
    errno.ETIMEDOUT: "no answer in time: check the address and the network",
    errno.ECONNREFUSED: "nothing listens there: check the address, and that the service runs",
    errno.EHOSTUNREACH: "the host cannot be reached: check the address and the network",
    errno.ENETUNREACH: "the network cannot be reached: check the network",
}


def environment_error(exc: OSError) -> str:
    """The message for an error of the machine (a full disk, a read-only or forbidden
    folder, a path too long, a host that does not answer), naming the file and what to do.

    Example:
        >>> import errno
        >>> print(environment_error(OSError(errno.ENOSPC, "No space left", "runs/a/x.json")))
        runs/a/x.json: No space left (the disk is full: free space, or choose an --out on \
another disk); what was finished before is kept, so the command can be run again
    """
    advice = _ENVIRONMENT_ERRORS.get(
        exc.errno or 0,
        "the machine refused the operation: check that the path exists and is readable, "
        "that the disk is healthy, and that any host named can be reached",
    )
    where = f"{exc.filename}: " if exc.filename else ""
    return (
        f"{where}{exc.strerror or exc} ({advice}); what was finished before is kept, so the "
        "command can be run again"
    )


def stdout() -> Console:
    return Console(soft_wrap=True)


def stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


def configure_logging(quiet: bool) -> None:
    logger = logging.getLogger("medadapt")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=stderr(), show_time=False, show_path=False)
        logger.addHandler(handler)


def note(text: str) -> None:
    """A note for the person at the terminal, on stderr (stdout stays the result)."""
    stderr().print(f"[yellow]note:[/] {escape(text)}", highlight=False)


def emit_json(data: object) -> None:
    click.echo(strict_json(data))


@click.group(
    cls=MedadaptGroup,
    epilog=_exit_code_help(),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="medadapt", prog_name="medadapt")
@click.option("--quiet", "-q", is_flag=True, help="Print only results, warnings and errors.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool) -> None:
    """Carry a CT classifier from the hospital it was trained at to the one that must use it.

    Each hospital is described once, in a profile (see hospital_profiles/template.yaml);
    each command below does one job.
    """
    ctx.obj = {"quiet": quiet}
    configure_logging(quiet)
    _stop_on_sigterm()


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: locks released, temporary files removed, exit 143."""
    if threading.current_thread() is not threading.main_thread():
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)


def overwrite_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--overwrite`` flag every job that writes a folder takes."""
    return click.option(
        "--overwrite",
        is_flag=True,
        help=f"Write into --out even when it was made by something else (another job, other "
        f"inputs) or holds this job's own input, starting afresh: {what}. Without it such a "
        "folder is refused.",
    )


def device_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--device`` option of every command that computes (its value: ``device``)."""
    return click.option(
        "--device",
        type=click.Choice(DEVICES),
        default=None,
        help="Where to compute: cpu, cuda (an NVIDIA GPU), mps (Apple's GPU) or auto (a GPU "
        "when there is one). Overrides the profile's training.device; the profile's hash "
        "does not change, since the device belongs to this machine, not to the site.",
    )(function)


def adaptation_options(batch: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """What ``adapt`` runs: ``--from``, ``--source-profile``, ``--method`` and ``--seeds``,
    shared by ``adapt`` and ``batch`` (where they apply when profiles, not a jobs file, are
    given)."""
    given = "With profiles: " if batch else ""
    options = [
        click.option(
            "--from",
            "source_model",
            type=click.Path(path_type=Path),
            help="With profiles instead of a jobs file: the source model carried to each site."
            if batch
            else "The source model folder (default: the profile's adaptation.source_model).",
        ),
        click.option(
            "--source-profile",
            type=click.Path(dir_okay=False, path_type=Path),
            help=f"{given or 'The '}{'the ' if batch else ''}source site's profile, for "
            "methods that need labelled source data.",
        ),
        click.option(
            "--method",
            help="With profiles: an adaptation method, or auto."
            if batch
            else "An adaptation method, or auto (default: the profile's).",
        ),
        click.option(
            "--seeds",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Run every method this many times, with seeds seed, seed+1, ...; each run is "
            "a candidate of its own (the target's split stays the same).",
        ),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def profile_option(
    purpose: str, required: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``-p/--profile FILE`` option every job takes; ``purpose`` says what it must hold."""
    return click.option(
        "-p",
        "--profile",
        "profile_path",
        required=required,
        type=click.Path(path_type=Path),
        help=f"The hospital profile: {purpose}.",
    )


def main() -> None:
    """The ``medadapt`` console script: load plugins, let them add commands, run."""
    configure_logging(quiet=False)
    get_plugin_host().add_commands(cli)
    cli.main(prog_name="medadapt")
