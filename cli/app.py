"""`chunkstore` commands. Each one parses its arguments, calls the library, renders."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from chunkstore.chunking import FASTCDC, FIXED, ChunkerParams
from chunkstore.codec import DEFAULT_LEVEL
from chunkstore.ingest import add_file
from chunkstore.inventory import file_info, list_files
from chunkstore.output import safe_output_name
from chunkstore.restore import restore_file
from chunkstore.store import Store
from chunkstore.tuning import tune_allocator
from chunkstore.verify import verify_store
from chunkstore_cli.render import emit, errors_as_messages, fail, human_bytes, progress_bar

app = typer.Typer(help="Content-addressed file distribution: add files, get them back.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

HomeOpt = Annotated[Optional[Path], typer.Option(
    "--home", help="Store directory (default: $CHUNKSTORE_HOME or ~/.chunkstore).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]


def open_store(home: Optional[Path]) -> Store:
    return Store(home)


@app.command()
def add(path: Annotated[Path, typer.Argument(help="File to add.")],
        name: Annotated[Optional[str], typer.Option(help="Name (default: file name).")] = None,
        level: Annotated[int, typer.Option(min=1, max=22, help="zstd level.")] = DEFAULT_LEVEL,
        chunker: Annotated[str, typer.Option(help=f"{FASTCDC} or {FIXED}.")] = FASTCDC,
        home: HomeOpt = None, json: JsonOpt = False) -> None:
    """Add a file to the store."""
    with errors_as_messages():
        if chunker not in (FASTCDC, FIXED):
            raise fail(f"unknown chunker {chunker!r}: choose {FASTCDC} or {FIXED}", 2)
        params = ChunkerParams() if chunker == FASTCDC else ChunkerParams.fixed()
        size = path.stat().st_size if path.is_file() else 0
        with open_store(home) as store, progress_bar("add", size, not json) as progress:
            result = add_file(store, path, name=name, level=level, chunker=params,
                              progress=progress)
        emit(result, json, lambda r: [
            f"added {r.name}",
            f"  id      {r.manifest_id}",
            f"  size    {human_bytes(r.size)} ({r.size} bytes)",
            f"  chunks  {r.chunks} ({r.new_chunks} new, {r.dedup_chunks} deduplicated)",
            f"  stored  {human_bytes(r.stored_bytes)} new",
        ])


@app.command()
def get(name_or_id: Annotated[str, typer.Argument(help="File name or manifest id.")],
        output: Annotated[Optional[str], typer.Option(
            "-o", "--output", help="Output path, or - for stdout (default: ./NAME).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
        home: HomeOpt = None, json: JsonOpt = False) -> None:
    """Write a stored file out."""
    with errors_as_messages():
        with open_store(home) as store:
            info = file_info(store, name_or_id)
            if output == "-":
                target = sys.stdout.buffer
            else:
                target = Path(output) if output else Path(safe_output_name(name_or_id))
            with progress_bar("get", info.size, not json and output != "-") as progress:
                result = restore_file(store, name_or_id, target, force=force, progress=progress)
        if output != "-":
            emit(result, json, lambda r: [f"wrote {r.output} ({human_bytes(r.size)}, "
                                          f"{r.chunks} chunks)"])


@app.command("ls")
def ls(home: HomeOpt = None, json: JsonOpt = False) -> None:
    """List the named files in the store."""
    with errors_as_messages(), open_store(home) as store:
        files = list_files(store)
        if json:
            emit([f.__dict__ for f in files], True, list)
        else:
            for f in files:
                typer.echo(f"{f.manifest_id[:16]}  {human_bytes(f.size):>10}  {f.chunks:>6} chunks"
                           f"  {f.name}")


@app.command()
def stat(name: Annotated[str, typer.Argument(help="File name or manifest id.")],
         home: HomeOpt = None, json: JsonOpt = False) -> None:
    """Show one file's manifest: size, chunks, chunker, stored bytes."""
    with errors_as_messages(), open_store(home) as store:
        emit(file_info(store, name), json, lambda i: [
            f"name      {i.name}", f"id        {i.manifest_id}",
            f"size      {human_bytes(i.size)} ({i.size} bytes)",
            f"chunks    {i.chunks} ({i.chunks_present} present locally)",
            f"chunker   {i.chunker}", f"stored    {human_bytes(i.stored_bytes)}",
        ])


@app.command()
def verify(name: Annotated[Optional[str], typer.Argument(help="Only this file.")] = None,
           home: HomeOpt = None, json: JsonOpt = False) -> None:
    """Re-hash every chunk; list corrupt or missing ones and exit non-zero if any."""
    with errors_as_messages(), open_store(home) as store:
        report = verify_store(store, name)
        emit(report, json, lambda r: [
            f"checked {r.chunks_checked} chunks ({human_bytes(r.bytes_checked)})",
            *[f"corrupt chunk {c}" for c in r.corrupt],
            *[f"missing chunk {c}" for c in r.missing],
            "ok" if r.ok else f"FAILED: {len(r.corrupt)} corrupt, {len(r.missing)} missing",
        ])
        if not report.ok:
            raise typer.Exit(1)


@app.command()
def rm(name: Annotated[str, typer.Argument(help="File name to remove.")],
       home: HomeOpt = None, json: JsonOpt = False) -> None:
    """Remove a name (its chunks are freed by gc)."""
    with errors_as_messages(), open_store(home) as store:
        mid = store.remove_name(name)
        emit({"name": name, "manifest_id": mid.hex()}, json,
             lambda r: [f"removed {r['name']} ({r['manifest_id'][:16]}); run gc to free space"])


@app.command()
def gc(home: HomeOpt = None, json: JsonOpt = False) -> None:
    """Delete chunks that no manifest references."""
    with errors_as_messages(), open_store(home) as store:
        emit(store.gc(), json, lambda r: [
            f"deleted {r.chunks_deleted} chunks, freed {human_bytes(r.bytes_freed)}"])


def main() -> None:
    tune_allocator()
    app()
