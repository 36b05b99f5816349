"""Benchmarks of enet-serve: the service load generator (bench/load.py) and its peers."""
