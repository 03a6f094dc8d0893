"""The libtorrent side of the swarm benchmark, as a program: each seeder and the leecher is a
process of its own running this file (libtorrent's work is C++ threads, so one process per
peer costs no GIL; its CPU time is the process's). It imports only libtorrent and the
standard library, so the harness (benchmarks/swarm_bench/torrent.py) never loads libtorrent.

    torrent_peer.py make FILE TORRENT [--piece-size BYTES]
    torrent_peer.py seed TORRENT DIR --host ADDRESS [--rate BYTES_PER_S] [--loopback-limited]
    torrent_peer.py leech TORRENT DIR --peer HOST:PORT [--peer ...] [--timeout S]

`make` writes a v1 .torrent of FILE. `seed` serves DIR/NAME (the file of the torrent), prints
`{"port": P}` once it listens, answers each `stats` line on stdin with its uploaded payload
bytes and exits at end of input. `leech` downloads into DIR from the given peers only and
prints `{"seconds": S, ...}`: from adding the torrent to every piece verified (SHA-1) and
written. Exit code 1 on any error, with one line on stderr.

Settings, so that the comparison with chunkstore and aria2c is fair on one machine:
- no DHT, local service discovery, UPnP, NAT-PMP or tracker; peers are given directly;
- TCP only: libtorrent's uTP crawls on loopback (its delay-based congestion control);
- several connections from one IP allowed (every peer is on 127.0.0.1);
- the seeder's cap: libtorrent puts local-network peers (127/8 among them) in its unlimited
  "local" peer class; `--loopback-limited` maps 127.0.0.0/8 to the global class instead, whose
  limit is `upload_rate_limit`; `rate_limit_ip_overhead` off so that, as with nginx's
  `limit_rate` and chunkstore's upload cap, only the bytes libtorrent sends count, not
  estimated TCP/IP headers;
- seeders start with every piece marked present (`have_pieces`), as a seeder that checked its
  file earlier: no hashing while serving, as chunkstore holders and nginx do none.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import libtorrent as lt

ALERT_WAIT_MS = 50


def settings(host: str, rate: int, alerts: int = 0) -> dict:
    return {
        "listen_interfaces": f"{host}:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "upload_rate_limit": rate,
        "rate_limit_ip_overhead": False,
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification
        | alerts,
    }


def make(args: argparse.Namespace) -> None:
    creator = lt.create_torrent(
        lt.list_files(args.file), args.piece_size, lt.create_torrent.v1_only
    )
    creator.set_creator("chunkstore swarm benchmark")
    lt.set_piece_hashes(creator, str(_parent(args.file)))
    with open(args.torrent, "wb") as f:
        f.write(lt.bencode(creator.generate()))


def _parent(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _params(torrent: str, save_path: str) -> lt.add_torrent_params:
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = save_path
    params.flags &= ~lt.torrent_flags.auto_managed
    params.flags &= ~lt.torrent_flags.paused
    return params


def _fail_on_error(session: lt.session) -> list:
    alerts = session.pop_alerts()
    for a in alerts:
        if isinstance(a, lt.torrent_error_alert | lt.file_error_alert | lt.listen_failed_alert):
            raise RuntimeError(a.message())
    return alerts


def seed(args: argparse.Namespace) -> None:
    session = lt.session(settings(args.host, args.rate))
    if args.loopback_limited:
        loopback = lt.ip_filter()
        loopback.add_rule("127.0.0.0", "127.255.255.255", 1 << lt.session.global_peer_class_id)
        session.set_peer_class_filter(loopback)
    params = _params(args.torrent, args.dir)
    params.have_pieces = [True] * params.ti.num_pieces()
    handle = session.add_torrent(params)
    deadline = time.monotonic() + 60
    while not (handle.status().is_seeding and session.listen_port()):
        _fail_on_error(session)
        if time.monotonic() > deadline:
            raise RuntimeError(f"not seeding after 60 s: {handle.status().state}")
        session.wait_for_alert(ALERT_WAIT_MS)
    print(json.dumps({"port": session.listen_port()}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            _fail_on_error(session)
            status = handle.status()
            print(json.dumps({"uploaded": status.total_payload_upload}), flush=True)


def leech(args: argparse.Namespace) -> None:
    # piece_progress: the first piece's alert gives the time to first verified byte
    session = lt.session(settings(args.host, 0, lt.alert.category_t.piece_progress_notification))
    start = time.perf_counter()
    handle = session.add_torrent(_params(args.torrent, args.dir))
    for peer in args.peer:
        host, port = peer.rsplit(":", 1)
        handle.connect_peer((host, int(port)))
    deadline = start + args.timeout
    first = None
    while True:
        for a in _fail_on_error(session):
            if first is None and isinstance(a, lt.piece_finished_alert):
                first = time.perf_counter() - start
        status = handle.status()
        if status.is_seeding:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"not complete after {args.timeout:g} s: {status.progress:.0%}")
        session.wait_for_alert(ALERT_WAIT_MS)
    seconds = time.perf_counter() - start
    downloaded = status.total_payload_download
    session.remove_torrent(handle)  # closes the file: every byte is in it when we exit
    print(json.dumps({"seconds": seconds, "downloaded": downloaded, "first_piece": first}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("file")
    m.add_argument("torrent")
    m.add_argument("--piece-size", type=int, default=1 << 20)
    s = sub.add_parser("seed")
    s.add_argument("torrent")
    s.add_argument("dir")
    s.add_argument("--host", required=True)
    s.add_argument("--rate", type=int, default=0, help="upload cap, bytes/s; 0: none")
    s.add_argument("--loopback-limited", action="store_true")
    le = sub.add_parser("leech")
    le.add_argument("torrent")
    le.add_argument("dir")
    le.add_argument("--peer", action="append", required=True)
    le.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    le.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()
    try:
        {"make": make, "seed": seed, "leech": leech}[args.command](args)
    except (RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
