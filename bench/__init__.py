"""Benchmarks of enet-serve: the service load generator (bench/load.py) and its peers."""
from __future__ import annotations

import argparse
import sys


def run_as_script(module_name: str) -> None:
    """`python -m enet_serve.bench.NAME [ARGS]`: the benchmark module's own arguments and run, as
    `enet-serve bench NAME` has them; exits with its status."""
    module = sys.modules[module_name]
    name = module.__spec__.name if module.__spec__ is not None else module_name
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=module.__doc__.splitlines()[0])
    module.add_arguments(parser)
    sys.exit(module.run(parser.parse_args()))
