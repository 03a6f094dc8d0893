"""The benchmarks, run as scripts from the repository root (`python benchmarks/ingest.py`,
`python benchmarks/swarm.py`); `swarm_bench` is the swarm benchmark's harness and `common`
what both benchmarks share. Not part of the installed package."""
