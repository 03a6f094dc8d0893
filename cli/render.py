"""How the CLI shows things: result lines or JSON on stdout, errors and progress on stderr."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from chunkstore.errors import (
    AmbiguousName,
    BootstrapFailed,
    ChunkstoreError,
    NoNetwork,
    OutputExists,
    UnsafeOutputName,
)

stderr = Console(stderr=True)


def emit(result: Any, as_json: bool, lines: Callable[[Any], list[str]]) -> None:
    """Print a result: JSON (one object) or the human-readable lines."""
    if as_json:
        data = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result
        typer.echo(json.dumps(data, sort_keys=True))
    else:
        for line in lines(result):
            typer.echo(line)


def fail(message: str, code: int = 1) -> typer.Exit:
    stderr.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def message(e: ChunkstoreError) -> str:
    """The library's message, with the command-line flag that is the way out where one is
    (the library speaks of its own parameters, not of flags)."""
    if isinstance(e, OutputExists):
        return f"{e.path} already exists (use --force to overwrite)"
    if isinstance(e, UnsafeOutputName):
        return f"name {e.name!r} cannot be used as an output file name; give one with -o"
    if isinstance(e, NoNetwork):
        remedy = "run `chunkstore serve`" + (
            " or pass --bootstrap HOST:PORT" if e.bootstrap_helps else ""
        )
        return f"{e.detail}: {remedy}"
    if isinstance(e, AmbiguousName):
        return (
            f"{len(e.publishers)} publishers have published {e.name!r}{e.detail}: "
            + ", ".join(e.publishers)
            + f"; choose one with `chunkstore get '{e.name}@KEY'` (8+ characters of the key "
            "will do) or `chunkstore trust KEY`"
        )
    if isinstance(e, BootstrapFailed):
        return "none of the --bootstrap addresses answered: " + ", ".join(e.addresses)
    return str(e)


def print_note(note: str) -> None:
    """A share link's limit (e.g. it carries no address to join through), one line on
    stderr; nothing for an empty note."""
    if note:
        stderr.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


def unreachable_link(e: BootstrapFailed, with_bootstrap: bool) -> str:
    """The message when nothing a link (and --bootstrap) names answered."""
    given = (
        "neither the link's addresses nor the --bootstrap ones"
        if with_bootstrap
        else "none of the link's addresses"
    )
    return (
        f"{given} answered ({', '.join(e.addresses)}): the node that made the link "
        "may be stopped, restarted on other ports or unreachable from here; ask for a new "
        "link or pass --bootstrap HOST:PORT of another node of the swarm"
    )


@contextmanager
def errors_as_messages() -> Iterator[None]:
    """Turn the library's errors into a one-line message and an exit code, no traceback."""
    try:
        yield
    except ChunkstoreError as e:
        raise fail(message(e)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    except BrokenPipeError:
        raise typer.Exit(141) from None
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        raise fail(f"{e.strerror or e}{where}") from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as e:  # a bug: still one line for the user, details on request
        logging.getLogger("chunkstore").debug("internal error", exc_info=True)
        raise fail(
            f"internal error: {type(e).__name__}: {e} (CHUNKSTORE_LOG=debug shows details)"
        ) from None


class ProgressSink:
    """A progress callback (bytes done) whose total may be learnt after it starts."""

    def __init__(self, bar: Progress, label: str, total: int | None) -> None:
        self._bar = bar
        self._task = bar.add_task(label, total=total)

    def __call__(self, n: int) -> None:
        self._bar.advance(self._task, n)

    def total(self, total: int) -> None:
        self._bar.update(self._task, total=total)


def _new_bar() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
    )


@contextmanager
def progress_bar(label: str, total: int | None, enabled: bool) -> Iterator[ProgressSink | None]:
    """A progress callback with throughput, shown only when stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with _new_bar() as bar:
        yield ProgressSink(bar, label, total)


def progress_callback(label: str, total: int) -> Callable[[int], None] | None:
    """A progress bar that starts now and ends when its total is reached (for a sequence of
    transfers, as in the demo); None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    bar = _new_bar()
    bar.start()
    sink = ProgressSink(bar, label, total)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        sink(n)
        done += n
        if done >= total:
            bar.stop()

    return advance
