"""enet-serve: the command line that ties serving, export, training and benchmarks together."""
