"""The DHT simulator's harness (benchmarks/dht_sim.py is its command line): real DhtNodes on
127.0.0.1 in one or several processes, churn, and what it costs and finds."""
