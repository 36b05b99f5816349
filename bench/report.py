"""`enet-serve bench report`: BENCHMARKS.md's generated sections and plots from bench/results/*.json.

Each section sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in BENCHMARKS.md and is
rewritten whole; a section whose markers are missing is appended at the end; the text outside the
markers is left alone. A section whose results file is missing is left as it is. Plots are
matplotlib PNGs written beside the results (bench/results/*.png) and linked from the sections.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from enet_serve.paths import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"
BENCHMARKS = REPO_ROOT / "BENCHMARKS.md"

# The article's table (Titan Xp, batch 1, ms), as quoted in issue 11; our torchvision names.
ARTICLE_TITAN_XP_MS = {"resnet18": 2.871, "alexnet": 1.003, "vgg16": 1.698, "squeezenet1_0": 2.725,
                       "mobilenet_v1": 33.251}
ENET_SIZES = [(360, 480), (360, 640), (720, 1280)]
# The ENet paper's inference times (Paszke et al. 2016, table 2: batch 1, ms), by our frame sizes; the
# paper's first size is 480x320, not 480x360.
ENET_PAPER_MS = {(360, 480): {"TX1": 47, "Titan X": 7}, (360, 640): {"TX1": 69, "Titan X": 7},
                 (720, 1280): {"TX1": 262, "Titan X": 21}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", type=Path, default=RESULTS, help="directory of the results files")
    p.add_argument("--out", type=Path, default=BENCHMARKS, help="the Markdown file to update")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs (no matplotlib)")


def _load(results: Path, name: str) -> dict | list | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with the section `name` replaced by `body` (appended when its markers are missing)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip() + "\n\n" + block + "\n"


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


# -- peers ---------------------------------------------------------------------------------------------------

def limit_of(res: dict, key: str = "fp32") -> float:
    lim = res["limit"]
    values = [lim[k]["best"]["images_per_s"] for k in (key, f"{key}_end") if k in lim]
    return max(values)


def peers_section(res: dict, plot: str | None) -> str:
    m, v = res["machine"], res["versions"]
    limit = limit_of(res)
    lines = [
        "```sh",
        "enet-serve bench peers --setup      # the peers' environments once (runs/peers/), then the run",
        "```",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (AVX-512 VNNI: {'yes' if m['avx512_vnni'] else 'no'}), Python "
        f"{m['python']}; " + ", ".join(f"{k} {val}" for k, val in sorted(v.items())) + ". "
        f"{res['duration_s']:.0f} s measured per row after a warm-up, clients = concurrent keep-alive connections "
        "of bench.load's client, CamVid val JPEGs (q90) to /segment?format=png, everything on the same cores.",
        "",
        "The limit (bench.limit, in-process, same run):",
        "",
        "| | when | one all-core session (best batch) | single-thread sessions side by side | limit |",
        "|---|---|---|---|---|",
    ]
    for key in ("fp32", "fp32_end", "int8"):
        if key in res["limit"]:
            lim = res["limit"][key]
            one = max(lim["all_cores"].values(), key=lambda r: r["images_per_s"])
            best_b = max(lim["all_cores"], key=lambda b: lim["all_cores"][b]["images_per_s"])
            lines.append(f"| {key.split('_')[0].upper()} | {'end' if key.endswith('end') else 'start'} | "
                         f"{one['images_per_s']:.1f} img/s (batch {best_b}) | "
                         f"{lim['side_by_side']['images_per_s']:.1f} img/s | **{lim['best']['images_per_s']:.1f}** |")
    lines += ["", f"FP32 limit used below: {limit:.1f} img/s (the larger of start and end).", "",
              "| server | clients | img/s | x limit | median ms | p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['target']} | {r['clients']} | {r['images_per_s']:.1f} | {r['images_per_s'] / limit:.2f} | "
                     f"{r['median_ms']:.0f} | {r['p99_ms']:.0f} | {sum(r['errors'].values()) if r['errors'] else 0} |")
    by = {(r["target"], r["clients"]): r for r in res["rows"]}
    others = [t for t in dict.fromkeys(r["target"] for r in res["rows"]) if t != "enet-serve"]
    lines += ["", "The service's ratios (throughput: service / other; p99: other / service, > 1 = the service is "
              "better):", "", "| against | " + " | ".join(f"{n} clients: throughput, p99" for n in res["clients"]) + " |",
              "|---|" + "---|" * len(res["clients"])]
    for t in others:
        cells = []
        for n in res["clients"]:
            s, o = by.get(("enet-serve", n)), by.get((t, n))
            cells.append(f"{s['images_per_s'] / o['images_per_s']:.2f}x, {o['p99_ms'] / s['p99_ms']:.2f}x"
                         if s and o and o["images_per_s"] and s["p99_ms"] else "-")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    if res.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k}: {why}" for k, why in res["skipped"].items())]
    if plot:
        lines += ["", f"![throughput and p99 against clients]({plot})"]
    return "\n".join(lines)


def plot_clients(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for t in dict.fromkeys(r["target"] for r in res["rows"]):
        rows = [r for r in res["rows"] if r["target"] == t]
        x = [r["clients"] for r in rows]
        style = dict(marker="o", lw=2.5 if t.startswith("enet-serve") else 1.2)
        a.plot(x, [r["images_per_s"] for r in rows], label=t, **style)
        b.plot(x, [r["p99_ms"] for r in rows], label=t, **style)
    a.axhline(limit_of(res), color="grey", ls="--", label="FP32 limit")
    for ax, title in ((a, "throughput, images/s"), (b, "p99 latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(res["clients"], [str(c) for c in res["clients"]])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    b.set_yscale("log")
    a.legend(fontsize=8)
    fig.suptitle(f"ENet 360x480 on {res['machine']['cores']} CPU cores: the service and its peers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- memory --------------------------------------------------------------------------------------------------

def memory_section(res: dict) -> str:
    lines = ["```sh", "enet-serve bench memory", "```", "",
             "Resident memory (VmRSS) of the service process with both shipped models (enet-camvid, "
             "lenet5-fashion), read from /proc once it is ready, and its peak (VmHWM, reset after the warm-up) while "
             f"{res['rows'][0]['overload_clients']} clients overload it (past `max_queue` they get 503s).", "",
             "| settings | flags | after warm-up MiB | overload peak MiB | overload img/s |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['variant']} | `{' '.join(r['flags']) or '(defaults)'}` | **{r['after_warmup_mib']:.0f}** | "
                     f"{r['overload_peak_mib']:.0f} | {r['overload_images_per_s']:.1f} |")
    return "\n".join(lines)


# -- INT8 ----------------------------------------------------------------------------------------------------

def precision_section(res: dict) -> str:
    rows = res["rows"]
    threads = sorted({r["threads"] for r in rows})
    sizes = sorted({(r["height"], r["width"]) for r in rows})
    lines = ["```sh", "enet-serve bench precision", "```", "",
             f"ms per frame at batch 1, median of {res['rounds']} rounds (FP32 and INT8 alternate within each round), "
             "random frames:", "",
             "| frame (W x H) | " + " | ".join(f"FP32, {t} thr | INT8, {t} thr | speed-up" for t in threads) + " |",
             "|---|" + "---|---|---|" * len(threads)]
    for h, w in sizes:
        cells = []
        for t in threads:
            f = next(r for r in rows if (r["precision"], r["height"], r["width"], r["threads"]) == ("fp32", h, w, t))
            i = next(r for r in rows if (r["precision"], r["height"], r["width"], r["threads"]) == ("int8", h, w, t))
            cells.append(f"{f['median_ms']:.1f} | {i['median_ms']:.1f} | **{i['speedup_vs_fp32']:.2f}x**")
        lines.append(f"| {w}x{h} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the article's table -------------------------------------------------------------------------------------

def article_section(archs: list[dict], precision: dict | None, plot: str | None) -> str:
    by = {r["arch"]: r for r in archs}
    lines = ["```sh", "enet-serve bench architectures --models resnet18,alexnet,vgg16,squeezenet1_0,mobilenet_v1,enet "
             "--json bench/results/architectures.json", "enet-serve bench precision", "```", "",
             "The article's figures (Titan Xp, batch 1, as quoted in issue 11) beside this CPU's (ONNX FP32, 2 threads, "
             "batch 1, median). GPU columns of this project: to be filled by the GPU issues.", "",
             "| architecture | parameters | GFLOPs | article, Titan Xp ms | this CPU ms | this project, GPU ms |",
             "|---|---|---|---|---|---|"]
    for arch, ms in ARTICLE_TITAN_XP_MS.items():
        r = by.get(arch, {})
        lines.append(f"| {arch} | {r.get('params', 0):,} | {_f(r.get('gflops'), 2)} | {ms} | "
                     f"{_f(_ms(r, 1), 1)} | |")
    sources = sorted({r["source"] for r in archs if r.get("source")})
    if sources:
        lines += ["", "This CPU's column: " + "; ".join(sources) + "."]
    cpu = {a: _ms(by.get(a, {}), 1) for a in ARTICLE_TITAN_XP_MS}
    if all(cpu.values()):
        mb = cpu["mobilenet_v1"]
        faster = [a for a, v in cpu.items() if a != "mobilenet_v1" and v < mb]
        lines += ["", f"\"MobileNet is abysmally slow\" does not hold on this CPU: MobileNet v1 takes {mb:.1f} ms, "
                  + (f"slower only than {', '.join(faster)}" if faster else "faster than every other row")
                  + f" (the article's 33.3 ms on a Titan Xp is {33.251 / 1.003:.0f}x AlexNet's there). A likely "
                  "reason: its depthwise convolutions are cheap in FLOPs and onnxruntime's CPU kernels handle them "
                  "well, while the article's GPU framework of the time had no fast depthwise kernel (not measured "
                  "here)."]
    if precision:
        lines += ["", "ENet at the paper's frame sizes (batch 1, ms per frame): this CPU beside the ENet paper's "
                  "own timings on an NVIDIA Jetson TX1 and a Titan X (its table 2; its first size is 480x320):", "",
                  "| frame (W x H) | FP32, 1 thread | FP32, 2 threads | INT8, 1 thread | INT8, 2 threads | "
                  "paper, TX1 | paper, Titan X | this project, GPU |",
                  "|---|---|---|---|---|---|---|---|"]
        for h, w in ENET_SIZES:
            def ms(p, t):
                row = next((r for r in precision["rows"] if (r["precision"], r["height"], r["width"], r["threads"])
                            == (p, h, w, t)), None)
                return _f(row["median_ms"]) if row else "-"
            paper = ENET_PAPER_MS[(h, w)]
            lines.append(f"| {w}x{h} | {ms('fp32', 1)} | {ms('fp32', 2)} | {ms('int8', 1)} | {ms('int8', 2)} | "
                         f"{paper['TX1']} | {paper['Titan X']} | |")
    if plot:
        lines += ["", f"![latency against GFLOPs]({plot})"]
    return "\n".join(lines)


def _ms(row: dict, batch: int) -> float | None:
    value = (row.get("ms_per_image") or {}).get(str(batch))
    return float(value) if value is not None else None


def plot_architectures(archs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in archs:
        ms = _ms(r, 1)
        if ms is None or not r.get("gflops"):
            continue
        ax.scatter(r["gflops"], ms, s=max(r["params"] / 2e5, 8), alpha=0.5)
        ax.annotate(r["arch"], (r["gflops"], ms), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("ms per image, batch 1 (ONNX FP32, 2 CPU threads)")
    ax.set_title("Latency against GFLOPs; marker area = parameters")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- run -----------------------------------------------------------------------------------------------------

def build(results: Path, out: Path, plots: bool = True) -> list[str]:
    """Rewrite `out`'s sections from `results`; the names of the sections written."""
    text = out.read_text() if out.is_file() else "# Benchmarks\n"
    written = []

    def rel(p: Path) -> str:
        try:
            return p.resolve().relative_to(out.resolve().parent).as_posix()
        except ValueError:
            return str(p)

    peers = _load(results, "peers")
    if peers:
        png = results / "clients.png"
        if plots:
            plot_clients(peers, png)
        text = replace_section(text, "peers", peers_section(peers, rel(png) if plots else None))
        written.append("peers")
    memory = _load(results, "memory")
    if memory:
        text = replace_section(text, "memory", memory_section(memory))
        written.append("memory")
    precision = _load(results, "precision")
    if precision:
        text = replace_section(text, "int8", precision_section(precision))
        written.append("int8")
    archs = _load(results, "architectures")
    if archs:
        png = results / "architectures.png"
        if plots:
            plot_architectures(archs, png)
        text = replace_section(text, "article", article_section(archs, precision, rel(png) if plots else None))
        written.append("article")
    out.write_text(text)
    return written


def run(args: argparse.Namespace) -> int:
    written = build(args.results, args.out, plots=not args.no_plots)
    print(f"{args.out}: wrote sections {', '.join(written) or '(none: no results files)'}")
    return 0
