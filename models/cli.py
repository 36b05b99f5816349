"""`enet-serve models`: the registered architectures and their specs as a table (or JSON)."""
from __future__ import annotations

import argparse
import json

from enet_serve.models.registry import get_spec, list_models


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("classify", "segment"), help="only this task")
    p.add_argument("--json", action="store_true", help="print the specs as JSON")


def spec_row(name: str) -> dict:
    s = get_spec(name)
    ref = s.reference
    return {"name": name, "task": s.task, "input": f"{s.input_channels}x{s.input_size[0]}x{s.input_size[1]}",
            "classes": s.num_classes, "labels": s.labels, "params": s.params, "gflops": s.gflops,
            "reference": f"{ref['metric']} {ref['value']} ({ref['dataset']})",
            "torchvision_compatible": s.torchvision_compatible, "paper": s.paper}


def run(args: argparse.Namespace) -> int:
    rows = [spec_row(n) for n in list_models(args.task)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    columns = [("name", "<"), ("task", "<"), ("input", ">"), ("classes", ">"), ("params", ">"),
               ("gflops", ">"), ("reference", "<")]
    cells = [[_fmt(r[c]) for c, _ in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, (c, _) in enumerate(columns)]
    print("  ".join(f"{c:{a}{w}}" for (c, a), w in zip(columns, widths)))
    for row in cells:
        print("  ".join(f"{v:{a}{w}}" for v, (_, a), w in zip(row, columns, widths)))
    return 0


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
