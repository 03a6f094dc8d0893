"""`chunkstore` commands. Each one parses its arguments, calls the library, renders.

The network stack (aiohttp, kademlia) is imported inside the commands that use it: it costs
~0.3 s at start-up, which a local add or get of a small file should not pay."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from chunkstore import getfile
from chunkstore.addresses import parse_address
from chunkstore.chunking import FASTCDC, FIXED, ChunkerParams
from chunkstore.codec import DEFAULT_LEVEL
from chunkstore.ingest import add_file
from chunkstore.inventory import file_info, list_files
from chunkstore.output import safe_output_name
from chunkstore.store import Store, default_home
from chunkstore.tuning import tune_allocator
from chunkstore.units import parse_rate, parse_size
from chunkstore.verify import verify_store
from chunkstore_cli.render import (emit, errors_as_messages, fail, human_bytes,
                                  progress_bar, progress_callback, stderr)

app = typer.Typer(help="Content-addressed file distribution: add files, get them back.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

BootstrapOpt = Annotated[Optional[list[str]], typer.Option(
    "--bootstrap", help="HOST:PORT of a node's DHT to join (repeatable).")]
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
        bootstrap: BootstrapOpt = None, home: HomeOpt = None, json: JsonOpt = False) -> None:
    """Get a file: from the local store if complete, else from every peer that holds it."""
    with errors_as_messages():
        peers = [parse_address(a) for a in bootstrap or []]
        if output == "-":
            target = sys.stdout.buffer
        else:
            target = Path(output) if output else Path(safe_output_name(name_or_id))
        with open_store(home) as store, \
                progress_bar("get", None, not json and output != "-") as bar:
            result = getfile.get(store, name_or_id, target, bootstrap=peers, force=force,
                                 progress=bar, on_total=bar and bar.total)
        if output != "-":
            emit(result, json, lambda r: [
                f"wrote {r.output} ({human_bytes(r.size)}, {r.chunks} chunks)",
                *([f"fetched {human_bytes(r.bytes_fetched)} in {r.seconds:.1f} s "
                   f"({r.throughput / 1e6:.1f} MB/s) from {len(r.sources)} peer(s), "
                   f"{r.chunks_reused} chunks already local"] if r.chunks_fetched else []),
            ])


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


@app.command()
def serve(host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
          port: Annotated[int, typer.Option(
              help="UDP port of the DHT and TCP port of transfers (0: the OS picks).")] = 0,
          bootstrap: BootstrapOpt = None,
          upload_rate: Annotated[Optional[str], typer.Option(
              help="Cap on upload bytes/s, e.g. 25MB (default: none).")] = None,
          home: HomeOpt = None, json: JsonOpt = False) -> None:
    """Run a node until Ctrl-C: join the DHT, serve chunks, announce what the store holds."""
    import asyncio

    from chunkstore import swarm
    with errors_as_messages():
        peers = [parse_address(a) for a in bootstrap or []]
        rate = parse_rate(upload_rate) if upload_rate else None
        if not 0 <= port < 65536:
            raise fail(f"port must be 0..65535, not {port}", 2)

        def ready(info) -> None:
            if json:
                emit(info, True, list)
                return
            stderr.print(f"serving {info.host} dht udp/{info.dht_port} transfer "
                         f"tcp/{info.transfer_port} (bootstrap others with --bootstrap "
                         f"{info.dht_address()}); Ctrl-C stops", markup=False, highlight=False)

        with open_store(home) as store:
            asyncio.run(swarm.serve(store, host=host, port=port, bootstrap=peers,
                                    upload_rate=rate, on_ready=ready))


@app.command()
def providers(object_id: Annotated[str, typer.Argument(help="Chunk or manifest id (hex).")],
              bootstrap: BootstrapOpt = None, home: HomeOpt = None,
              json: JsonOpt = False) -> None:
    """List the peers the DHT knows as holders of a chunk or manifest."""
    import asyncio

    from chunkstore import swarm
    with errors_as_messages():
        peers = [parse_address(a) for a in bootstrap or []]
        holders = asyncio.run(swarm.providers(Path(home) if home else default_home(),
                                              object_id, peers))
        emit([{"host": h.host, "port": h.port} for h in holders], json,
             lambda hs: [f"{h['host']}:{h['port']}" for h in hs] or ["no holders found"])


@app.command()
def peers(home: HomeOpt = None, json: JsonOpt = False) -> None:
    """List the DHT contacts of the node serving this home."""
    import asyncio

    from chunkstore import swarm
    with errors_as_messages():
        contacts = asyncio.run(swarm.peers(Path(home) if home else default_home()))
        emit(contacts, json, lambda cs: [f"{c['host']}:{c['port']}  {c['node_id']}"
                                         for c in cs] or ["no peers"])


@app.command()
def demo(nodes: Annotated[int, typer.Option(min=3, max=32, help="Local nodes to start.")] = 5,
         size: Annotated[str, typer.Option(help="Size of each demo file.")] = "64MiB",
         upload_rate: Annotated[str, typer.Option(
             help="Upload cap per node, standing in for a peer's uplink (0: none).")] = "20MB",
         json: JsonOpt = False) -> None:
    """Start a local swarm, fetch a file from one holder and one from several, print speeds."""
    from chunkstore.demo import run_demo
    with errors_as_messages():
        nbytes = parse_size(size)
        rate_text = None if parse_rate(upload_rate) is None else upload_rate

        def progress(label: str, total: int):
            return None if json else progress_callback(label, total)

        result = run_demo(nodes=nodes, size=nbytes, upload_rate=rate_text,
                          report=(lambda line: None) if json else
                          (lambda line: stderr.print(line, markup=False, highlight=False)),
                          progress=progress)
        emit(result, json, lambda r: [
            f"single source: {r.single_source_mbps:7.1f} MB/s",
            f"multi source:  {r.multi_source_mbps:7.1f} MB/s from {len(r.sources)} holders "
            f"({r.speedup:.2f}x)",
            "files identical: " + ("yes" if r.identical else "NO"),
        ])
        if not result.identical:
            raise typer.Exit(1)


@app.command()
def bench(size: Annotated[str, typer.Option(help="File size.")] = "512MiB",
          holders: Annotated[str, typer.Option(
              help="Holder counts of the capped sweep, comma-separated.")] = "1,2,4,8",
          rate: Annotated[str, typer.Option(
              help="Cap per holder and per nginx mirror, bytes/s (25MB = 25*10^6 B/s); "
                   "with --netns the tc rate of each holder's link.")] = "25MB",
          repeat: Annotated[int, typer.Option(min=1, help="Repetitions of each point.")] = 3,
          content: Annotated[str, typer.Option(
              help="File: mixed (half random, half text), random (incompressible: equal "
                   "wire bytes for chunkstore and nginx) or both.")] = "both",
          incompressible: Annotated[bool, typer.Option(
              "--incompressible", help="Same as --content random.")] = False,
          uncapped_holders: Annotated[str, typer.Option(
              help="Holder counts of the uncapped (CPU-bound) runs, or none.")] = "1,3",
          no_aria2c: Annotated[bool, typer.Option(
              "--no-aria2c", help="Skip the aria2c + nginx comparison.")] = False,
          no_local: Annotated[bool, typer.Option(
              "--no-local", help="Skip the local-get ceiling.")] = False,
          netns: Annotated[bool, typer.Option(
              "--netns", help="Holders and mirrors in network namespaces, links shaped by "
                              "tc to --rate (root only).")] = False,
          no_install: Annotated[bool, typer.Option(
              "--no-install", help="Do not apt-get install missing aria2 / nginx-light.")] = False,
          no_plot: Annotated[bool, typer.Option(
              "--no-plot", help="Skip the PNG (matplotlib not needed).")] = False,
          out: Annotated[Path, typer.Option(help="Output directory.")] = Path("benchmarks/out"),
          workdir: Annotated[Optional[Path], typer.Option(
              help="Make the temporary directory inside DIR.")] = None,
          json: JsonOpt = False) -> None:
    """Multi-source vs single-source get throughput against aria2c, with a table and a plot."""
    from chunkstore.bench import (BenchConfig, BenchUnavailable, install_tools,
                                  missing_tools, parse_contents, parse_counts,
                                  render_markdown, run_bench, stop_on_signals, write_outputs)
    with errors_as_messages():
        cap = parse_rate(rate)
        if cap is None:
            raise fail("--rate must be a rate: the uncapped runs are --uncapped-holders", 2)
        config = BenchConfig(size=parse_size(size), holders=parse_counts(holders), rate=cap,
                             repeat=repeat, contents=parse_contents(content, incompressible),
                             uncapped_holders=parse_counts(uncapped_holders),
                             aria2c=not no_aria2c, local_get=not no_local, netns=netns,
                             workdir=workdir)

        def report(line: str) -> None:
            stderr.print(line, markup=False, highlight=False)

        stop_on_signals()
        missing = missing_tools(config)
        if missing and not no_install:
            install_tools(missing, report)
        try:
            result = run_bench(config, report)
        except BenchUnavailable as e:
            stderr.print(f"skipped: {e}", markup=False, highlight=False)
            return
        paths = write_outputs(result, out, plot=not no_plot)
        report("wrote " + ", ".join(str(p) for p in paths.values()))
        emit(result.to_json(), json, lambda data: render_markdown(result).splitlines())


def configure_logging() -> None:
    """Warnings of our own on stderr; the DHT libraries' per-peer chatter only on request.

    rpcudp logs every unanswered datagram and kademlia every evicted contact: routine in a
    swarm where peers come and go, and noise in front of a user. CHUNKSTORE_LOG=debug shows
    everything."""
    level = os.environ.get("CHUNKSTORE_LOG", "").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s")
    if not level:
        logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
        logging.getLogger("kademlia").setLevel(logging.ERROR)


def main() -> None:
    configure_logging()
    tune_allocator()
    app()
