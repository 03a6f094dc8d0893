"""The swarm benchmark harness: one file fetched from 1..N holders, against aria2c from N
HTTP mirrors.

Every process and network namespace it uses is started by it and stopped before it returns:

- chunkstore, capped: H holder nodes (`chunkstore serve --upload-rate R`, a token bucket on
  the *stored* bytes a node sends) and, per measurement, a fresh fetcher node with an empty
  home; the downloader is the `chunkstore get --json` child process, timed (wall clock) and
  measured (peak RSS) from here. The fetcher's node only does DHT lookups for it.
- aria2c, capped: the same file from H nginx mirrors, one process each, `limit_rate R` per
  connection, fetched with `aria2c -s H -x1 -k1M` (one connection per mirror, so the cap is per
  mirror; `-k1M` because aria2c splits nothing under 40 MiB by default).
- uncapped: the same without any cap (CPU-bound on this machine), and `chunkstore get` of the
  file from a home that holds all of it (a local restore) as the ceiling of the pipeline.
- netns mode: each holder and each mirror in a network namespace of its own, linked by a veth
  pair to a bridge in a hub namespace and shaped by `tc tbf` to R on its egress; the fetcher in
  one more namespace. No in-process cap: real per-host links. Rate only: this kernel has no
  netem, so no added delay.

Each chunkstore get also reports its time to first byte and the phases it went through
(`get --json`: `first_byte_seconds`, `phases`), shown beside the throughput and in a table of
their own. The fetcher reaches the DHT through its node (default) or, as a fresh machine,
with `get --bootstrap` and no node (`via`); `departed` nodes join the swarm and are killed
before each get, leaving contacts that no longer answer, as getters that came and went do.

Throughput is always *file* bytes (MB = 10^6 bytes) per second of the downloader's wall time,
its start-up included (what a user waits for; aria2c starts in milliseconds, the chunkstore
CLI in ~0.4 s). chunkstore's cap counts stored bytes, so a compressible file moves fewer bytes
through it than through nginx: the random (incompressible) file is the like-for-like
comparison, the mixed file (half random, half text) shows what compression adds.

The harness never prints: progress goes to the `progress` callback, results come back as a
`BenchResult` that `render_markdown`, `write_plot` and `write_outputs` turn into files.
`benchmarks/swarm.py` is its command line. The modules:

- models: BenchConfig, Measurement, Point, Target, BenchResult (and its JSON);
- runner: run_bench, which prepares the files and measures every point;
- holders: the chunkstore holder nodes and the fetcher's node of one measurement;
- mirrors: the nginx mirrors aria2c fetches from;
- netns: NetnsLab, the network namespaces and shaped links of netns mode;
- measure: running one measured process; CPU time from /proc;
- tools: finding and installing aria2c, nginx, ip and tc; the chunkstore CLI command;
- report: the markdown tables, the plot and the output files;
- errors: BenchError, BenchUnavailable, ProcessFailed.
"""
