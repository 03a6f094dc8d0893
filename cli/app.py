"""`chunkstore` commands. Each one parses its arguments, calls the library, renders.

Every command is a call of the public API (`chunkstore.add`, `get`, ...), which imports the
network stack (aiohttp, kademlia: ~0.3 s) only when a command needs the network. What is
here: options, progress bars, output lines, and the flags an error message can point to."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

import chunkstore
from chunkstore.local.memory import tune_allocator
from chunkstore.local.output import safe_output_name
from chunkstore.net.addresses import parse_address
from chunkstore.net.patience import DEFAULT_PATIENCE
from chunkstore.objects.chunking import FASTCDC, FIXED
from chunkstore.objects.codec import DEFAULT_LEVEL
from chunkstore.objects.link import looks_like_link
from chunkstore.objects.name_syntax import split_name_spec
from chunkstore.units import format_size, parse_rate, parse_size
from chunkstore_cli.render import (
    emit,
    errors_as_messages,
    fail,
    print_note,
    progress_bar,
    progress_callback,
    stderr,
    unreachable_link,
)

app = typer.Typer(
    help="Content-addressed file distribution: add files, get them back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

BootstrapOpt = Annotated[
    list[str] | None,
    typer.Option("--bootstrap", help="HOST:PORT of a node's DHT to join (repeatable)."),
]
HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Store directory (default: $CHUNKSTORE_HOME or ~/.chunkstore)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]


@app.command()
def add(
    path: Annotated[Path, typer.Argument(help="File to add.")],
    name: Annotated[str | None, typer.Option(help="Name (default: file name).")] = None,
    level: Annotated[int, typer.Option(min=1, max=22, help="zstd level.")] = DEFAULT_LEVEL,
    chunker: Annotated[str, typer.Option(help=f"{FASTCDC} or {FIXED}.")] = FASTCDC,
    home: HomeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Add a file to the store."""
    with errors_as_messages():
        if chunker not in (FASTCDC, FIXED):
            raise fail(f"unknown chunker {chunker!r}: choose {FASTCDC} or {FIXED}", 2)
        size = path.stat().st_size if path.is_file() else 0
        with progress_bar("add", size, not json) as progress:
            result = chunkstore.add(
                path, name=name, home=home, level=level, chunker=chunker, progress=progress
            )
        emit(
            result,
            json,
            lambda r: [
                f"added {r.name}",
                f"  id      {r.manifest_id}",
                f"  size    {format_size(r.size)} ({r.size} bytes)",
                f"  chunks  {r.chunks} ({r.new_chunks} new, {r.dedup_chunks} deduplicated)",
                f"  stored  {format_size(r.stored_bytes)} new",
                f"  link    {r.link}",
            ],
        )
        print_note(chunkstore.link_note(home=home))


@app.command()
def link(
    name_or_id: Annotated[str, typer.Argument(help="File name or manifest id.")],
    home: HomeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Print a share link for a file in the store: `chunkstore get LINK` fetches it anywhere."""
    with errors_as_messages():
        token = chunkstore.link(name_or_id, home=home)
        emit({"link": token}, json, lambda r: [r["link"]])
        print_note(chunkstore.link_note(home=home))


@app.command()
def get(
    name_or_id: Annotated[
        str, typer.Argument(help="File name, NAME@KEY, manifest id or share link.")
    ],
    output: Annotated[
        str | None,
        typer.Option("-o", "--output", help="Output path, or - for stdout (default: ./NAME)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    bootstrap: BootstrapOpt = None,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            help="Seconds to keep looking for the name and the file's holders while none is found.",
        ),
    ] = DEFAULT_PATIENCE,
    home: HomeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Get a file: from the local store if complete, else from every peer that holds it.

    A share link (from `add` or `link`) needs no node and no --bootstrap: it says where to
    join, and the file is saved under the link's name. A name means this home's own file,
    else the publisher pinned for it here, else a trusted one, else the only one; NAME@KEY
    means that publisher's (a key prefix of 8+ characters will do)."""
    with errors_as_messages():
        peers = [parse_address(a) for a in bootstrap or []]
        shared = chunkstore.Link.decode(name_or_id) if looks_like_link(name_or_id) else None
        if output == "-":
            target = sys.stdout.buffer
        elif output:
            target = Path(output)
        elif shared is not None:
            target = Path(safe_output_name(shared.name or shared.manifest_id.hex()))
        else:
            target = Path(safe_output_name(split_name_spec(name_or_id)[0]))
        with progress_bar("get", None, not json and output != "-") as bar:
            try:
                result = chunkstore.get(
                    name_or_id,
                    target,
                    home=home,
                    bootstrap=peers,
                    force=force,
                    progress=bar,
                    on_total=bar and bar.total,
                    patience=wait,
                )
            except chunkstore.BootstrapFailed as e:
                if shared is None or not shared.addresses:
                    raise
                raise fail(unreachable_link(e, bool(peers))) from None
        if output != "-":
            emit(
                result,
                json,
                lambda r: [
                    f"wrote {r.output} ({format_size(r.size)}, {r.chunks} chunks)",
                    *(
                        [
                            f"fetched {format_size(r.bytes_fetched)} in {r.seconds:.1f} s "
                            f"({r.throughput / 1e6:.1f} MB/s) from {len(r.sources)} peer(s), "
                            f"{r.chunks_reused} chunks already local"
                        ]
                        if r.chunks_fetched
                        else []
                    ),
                ],
            )


@app.command("ls")
def ls(
    incomplete: Annotated[
        bool,
        typer.Option(
            "--incomplete",
            help="List the files held but not whole here (downloads not completed) instead.",
        ),
    ] = False,
    home: HomeOpt = None,
    json: JsonOpt = False,
) -> None:
    """List the named files in the store (`rm` takes a name or an id)."""
    with errors_as_messages():
        emit_files(chunkstore.ls(home=home, incomplete=incomplete), json)


def emit_files(files: list[chunkstore.FileEntry], json: bool) -> None:
    """A list of files: a JSON array, or one `file_line` each."""
    emit([f.__dict__ for f in files] if json else files, json, lambda fs: list(map(file_line, fs)))


def file_line(f: chunkstore.FileEntry) -> str:
    """One line of `ls` / `pin`: id, size, chunks (stored of all when counted), name."""
    chunks = f"{f.chunks:>6} chunks"
    if 0 <= f.chunks_present < f.chunks:
        chunks = f"{f.chunks_present}/{f.chunks} chunks, {f.held_by}"
    return f"{f.manifest_id[:16]}  {format_size(f.size):>10}  {chunks}  {f.name}".rstrip()


@app.command()
def stat(
    name: Annotated[str, typer.Argument(help="File name or manifest id.")],
    home: HomeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Show one file's manifest: size, chunks, chunker, stored bytes."""
    with errors_as_messages():
        emit(
            chunkstore.stat(name, home=home),
            json,
            lambda i: [
                f"name      {i.name}",
                f"id        {i.manifest_id}",
                f"size      {format_size(i.size)} ({i.size} bytes)",
                f"chunks    {i.chunks} ({i.chunks_present} present locally)",
                f"chunker   {i.chunker}",
                f"stored    {format_size(i.stored_bytes)}",
            ],
        )


@app.command()
def verify(
    name: Annotated[str | None, typer.Argument(help="Only this file.")] = None,
    home: HomeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Re-hash every chunk; list corrupt or missing ones and exit non-zero if any."""
    with errors_as_messages():
        report = chunkstore.verify(name, home=home)
        emit(
            report,
            json,
            lambda r: [
                f"checked {r.chunks_checked} chunks ({format_size(r.bytes_checked)})",
                *[f"corrupt chunk {c}" for c in r.corrupt],
                *[f"missing chunk {c}" for c in r.missing],
                *[f"unfinished download {m} (a get of it resumes)" for m in r.incomplete],
                *[
                    f"leftover partial output {p} (of an interrupted get: a get of the same "
                    "output removes it)"
                    for p in r.leftover_partials
                ],
                "ok" if r.ok else f"FAILED: {len(r.corrupt)} corrupt, {len(r.missing)} missing",
            ],
        )
        if not report.ok:
            raise typer.Exit(1)


@app.command()
def rm(
    name: Annotated[str, typer.Argument(help="File name, or manifest id (releases all of it).")],
    unpublish: Annotated[
        bool,
        typer.Option(
            "--unpublish", help="Publish a signed removal of the name (other nodes drop it now)."
        ),
    ] = False,
    home: HomeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Release a file (a name, an incomplete download, or an id: all its names and its pin)
    and stop publishing its names; gc then frees its chunks."""
    with errors_as_messages():
        emit(
            chunkstore.rm(name, home=home, unpublish=unpublish),
            json,
            lambda r: [
                f"removed {r.name or ', '.join(r.names) or 'the file'} ({r.manifest_id[:16]}); "
                + still_held(r),
                *(
                    ["unpublished: a serving node publishes the signed removal"]
                    if r.unpublished
                    else []
                ),
            ],
        )


def still_held(r: chunkstore.RemoveResult) -> str:
    if r.still_held == "pin":
        return f"still pinned: `chunkstore unpin {r.manifest_id}` releases it"
    if r.still_held:
        return "another name still holds it"
    return "run gc to free space"


@app.command()
def pin(
    name_or_id: Annotated[
        str | None, typer.Argument(help="File name or manifest id (none: list the pinned).")
    ] = None,
    home: HomeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Keep a file whatever happens to its names, until `unpin`."""
    with errors_as_messages():
        if name_or_id is None:
            emit_files(chunkstore.pins(home=home), json)
            return
        emit(
            chunkstore.pin(name_or_id, home=home),
            json,
            lambda r: [f"pinned {r.manifest_id[:16]}" + ("" if r.changed else " (already)")],
        )


@app.command()
def unpin(
    name_or_id: Annotated[str, typer.Argument(help="File name or manifest id.")],
    home: HomeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Drop a file's pin (it goes unless a name holds it; gc then frees its chunks)."""
    with errors_as_messages():
        emit(
            chunkstore.unpin(name_or_id, home=home),
            json,
            lambda r: [f"unpinned {r.manifest_id[:16]}"],
        )


@app.command()
def key(home: HomeOpt = None) -> None:
    """Print this home's publisher key (others use it as NAME@KEY or with `trust`)."""
    with errors_as_messages():
        typer.echo(chunkstore.key(home=home))


@app.command()
def trust(
    publisher: Annotated[
        str | None, typer.Argument(help="Publisher key to trust (none: list the trusted).")
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Trust a publisher for every name (a bare name it published resolves to its file)."""
    with errors_as_messages():
        if publisher is None:
            for text in chunkstore.trusted(home=home):
                typer.echo(text)
            return
        added = chunkstore.trust(publisher, home=home)
        typer.echo(f"trusted {publisher.strip()}" + ("" if added else " (already)"))


@app.command()
def untrust(
    publisher: Annotated[str, typer.Argument(help="Publisher key to stop trusting.")],
    home: HomeOpt = None,
) -> None:
    """Stop trusting a publisher."""
    with errors_as_messages():
        removed = chunkstore.untrust(publisher, home=home)
        typer.echo(f"untrusted {publisher.strip()}" + ("" if removed else " (was not trusted)"))


@app.command()
def gc(
    compact: Annotated[
        bool | None,
        typer.Option(
            "--compact/--no-compact",
            help="Always / never shrink the store file (default: when it would give back "
            "an eighth of it). Needs the store open nowhere else.",
        ),
    ] = None,
    home: HomeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Free the chunks no name, pin or running operation holds, and give the space back."""
    with errors_as_messages():
        emit(chunkstore.gc(home=home, compact=compact), json, gc_lines)


def gc_lines(r: chunkstore.GcResult) -> list[str]:
    lines = [f"deleted {r.chunks_deleted} chunks, freed {format_size(r.bytes_freed)}"]
    if r.manifests_dropped:
        lines.append(f"dropped {r.manifests_dropped} manifests nothing held")
    lines += [f"skipped undecodable manifest {m}" for m in r.undecodable]
    if r.compacted:
        lines.append(
            f"store file {format_size(r.store_bytes_before)} -> "
            f"{format_size(r.store_bytes_after)}: "
            f"{format_size(r.bytes_returned)} given back to the filesystem"
        )
    elif r.compact_note:
        lines.append(
            f"store file stays at {format_size(r.store_bytes_before)}: not compacted, "
            f"{r.compact_note}"
        )
    return lines


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[
        int, typer.Option(help="UDP port of the DHT and TCP port of transfers (0: the OS picks).")
    ] = 0,
    bootstrap: BootstrapOpt = None,
    upload_rate: Annotated[
        str | None, typer.Option(help="Cap on upload bytes/s, e.g. 25MB (default: none).")
    ] = None,
    home: HomeOpt = None,
    json: JsonOpt = False,
) -> None:
    """Run a node until Ctrl-C: join the DHT, serve chunks, announce what the store holds."""
    with errors_as_messages():
        peers = [parse_address(a) for a in bootstrap or []]
        rate = parse_rate(upload_rate) if upload_rate else None
        if not 0 <= port < 65536:
            raise fail(f"port must be 0..65535, not {port}", 2)

        def ready(node: chunkstore.Node) -> None:
            if json:
                emit(node.info, True, list)
                return
            stderr.print(
                f"serving {node.host} dht udp/{node.port} transfer "
                f"tcp/{node.transfer_port} (bootstrap others with --bootstrap "
                f"{node.dht_address}); Ctrl-C stops",
                markup=False,
                highlight=False,
            )

        import asyncio  # only the network commands need it (~45 ms of every start)

        asyncio.run(
            serve_until_signalled(
                chunkstore.Node(home, host=host, port=port, bootstrap=peers, upload_rate=rate),
                ready,
            )
        )


async def serve_until_signalled(
    node: chunkstore.Node, ready: Callable[[chunkstore.Node], None]
) -> None:
    """Run `node` until SIGINT or SIGTERM (the library installs no signal handlers)."""
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with node:
        ready(node)
        await stop.wait()


@app.command()
def providers(
    object_id: Annotated[str, typer.Argument(help="Chunk or manifest id (hex).")],
    bootstrap: BootstrapOpt = None,
    home: HomeOpt = None,
    json: JsonOpt = False,
) -> None:
    """List the peers the DHT knows as holders of a chunk or manifest."""
    with errors_as_messages():
        peers = [parse_address(a) for a in bootstrap or []]
        holders = chunkstore.providers(object_id, home=home, bootstrap=peers)
        emit(
            [{"host": h.host, "port": h.port} for h in holders],
            json,
            lambda hs: [f"{h['host']}:{h['port']}" for h in hs] or ["no holders found"],
        )


@app.command()
def peers(home: HomeOpt = None, json: JsonOpt = False) -> None:
    """List the DHT contacts of the node serving this home."""
    with errors_as_messages():
        contacts = [
            {"host": c.host, "port": c.port, "node_id": c.node_id.hex()}
            for c in chunkstore.peers(home=home)
        ]
        emit(
            contacts,
            json,
            lambda cs: [f"{c['host']}:{c['port']}  {c['node_id']}" for c in cs] or ["no peers"],
        )


@app.command()
def demo(
    nodes: Annotated[int, typer.Option(min=3, max=32, help="Local nodes to start.")] = 5,
    size: Annotated[str, typer.Option(help="Size of each demo file.")] = "64MiB",
    upload_rate: Annotated[
        str, typer.Option(help="Upload cap per node, standing in for a peer's uplink (0: none).")
    ] = "20MB",
    json: JsonOpt = False,
) -> None:
    """Start a local swarm, fetch a file from one holder and one from several, print speeds."""
    from chunkstore.demo.scenario import run_demo

    with errors_as_messages():
        nbytes = parse_size(size)
        rate_text = None if parse_rate(upload_rate) is None else upload_rate

        def progress(label: str, total: int):
            return None if json else progress_callback(label, total)

        result = run_demo(
            nodes=nodes,
            size=nbytes,
            upload_rate=rate_text,
            report=(lambda line: None)
            if json
            else (lambda line: stderr.print(line, markup=False, highlight=False)),
            progress=progress,
        )
        emit(
            result,
            json,
            lambda r: [
                f"single source: {r.single_source_mbps:7.1f} MB/s",
                f"multi source:  {r.multi_source_mbps:7.1f} MB/s from {len(r.sources)} holders "
                f"({r.speedup:.2f}x)",
                "files identical: " + ("yes" if r.identical else "NO"),
            ],
        )
        if not result.identical:
            raise typer.Exit(1)


def configure_logging() -> None:
    """Warnings of our own on stderr; the DHT libraries' per-peer chatter only on request.

    rpcudp logs every unanswered datagram and kademlia every evicted contact: routine in a
    swarm where peers come and go, and noise in front of a user. CHUNKSTORE_LOG=debug shows
    everything."""
    level = os.environ.get("CHUNKSTORE_LOG", "").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.WARNING), format="%(levelname)s %(name)s: %(message)s"
    )
    if not level:
        logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
        logging.getLogger("kademlia").setLevel(logging.ERROR)


def main() -> None:
    configure_logging()
    tune_allocator()
    app()
