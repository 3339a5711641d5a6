"""Runs every benchmark (each in its own process) and writes the side-by-side results.

    .venv/bin/python benchmarks/run_all.py --out bench_results.json   # `make bench`
    .venv/bin/python benchmarks/run_all.py --quick --out /tmp/b.json  # plumbing check, tiny
    .venv/bin/python benchmarks/run_all.py --device gpu               # MFU vs the card's peak

Output: a JSON file (`meta` with versions, CPU model, date and load averages; `figures`,
each with its peer figure and the ratio; `details` per benchmark) and a markdown table,
printed and written to `benchmarks/RESULTS.md` (full runs only).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BENCHES = (
    "sampler",
    "ppo",
    "sft_mfu",
    "dense_vjp",
    "logprobs",
    "fsdp_memory",
    "reward_probe",
    "host_threads",
    "rows_per_pass",
)
TRL_PYTHON = os.path.join(REPO, ".venv-trl", "bin", "python")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["trl"] = None
    if os.path.exists(TRL_PYTHON):
        code = (
            "import importlib.metadata as m, json; print(json.dumps({k: m.version(k) for k in "
            "('trl', 'torch', 'transformers', 'accelerate')}))"
        )
        proc = subprocess.run([TRL_PYTHON, "-c", code], capture_output=True, text=True)
        if proc.returncode == 0:
            trl_env = json.loads(proc.stdout)
            out["trl"] = trl_env.pop("trl")
            out["trl_venv"] = trl_env
    return out


def run_bench(name: str, args) -> dict:
    cmd = [sys.executable, os.path.join(HERE, f"bench_{name}.py"), "--device", args.device]
    if args.quick:
        cmd.append("--quick")
    if args.repeats:
        cmd += ["--repeats", str(args.repeats)]
    t0 = time.perf_counter()
    # stderr (progress lines, warnings) goes to a file the user can tail while it runs.
    with open(args.log, "a") as log:
        log.write(f"== {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    start = proc.stdout.find("{")
    if proc.returncode != 0 or start < 0:
        with open(args.log) as log:
            tail = log.read()[-3000:]
        return dict(error=f"exit {proc.returncode}: {tail}", wall_s=wall, figures=[])
    result = json.loads(proc.stdout[start:])
    result["wall_s"] = wall
    return result


def fmt(x, unit: str = "") -> str:
    if x is None:
        return "—"
    if unit == "bytes":
        return f"{x / 2**20:,.1f} MiB"
    if unit == "FLOP/s":
        return f"{x / 1e9:,.2f} GFLOP/s"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def trl_venv_versions(versions: dict) -> str:
    """`; .venv-trl: torch X, transformers Y, ...` (the peer's own packages), or ''."""
    env = versions.get("trl_venv") or {}
    return "; .venv-trl: " + ", ".join(f"{k} {v}" for k, v in env.items()) if env else ""


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# Benchmark results",
        "",
        f"{meta['date']} · {meta['cpu']} · {meta['cpu_count']} cores · device {meta['device']}"
        f" · load average before {meta['loadavg_before']} after {meta['loadavg_after']}",
        "",
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if isinstance(v, str))
        + trl_venv_versions(meta["versions"]),
        "",
        "| benchmark | ours | peer | peer is | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in results["figures"]:
        unit = f["unit"]
        ratio = "—" if f["ratio"] is None else f"{f['ratio']:.3g}"
        target = (
            "—"
            if f.get("target") is None
            else (f"≥ {f['target']}" if f["higher_is_better"] else f"≤ {f['target']}")
        )
        met = {True: "yes", False: "**no**", None: ""}[f.get("target_met")]
        ours = fmt(f["ours"], unit) + ("" if unit in ("bytes", "FLOP/s") else f" {unit}")
        peer = fmt(f["peer"], unit) + ("" if unit in ("bytes", "FLOP/s") else f" {unit}")
        lines.append(
            f"| {f['name']} | {ours} | {peer} | {f['peer_name']} | {ratio} | {target} | {met} |"
        )
    for name, d in results["details"].items():
        if "error" in d:
            lines.append(f"\n`{name}` failed: {d['error'][-500:]}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_results.json")
    p.add_argument(
        "--md",
        default=None,
        help="markdown path (default: benchmarks/RESULTS.md for full runs, none with --quick)",
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--repeats", type=int, default=0, help="timed runs per side (0: defaults)")
    p.add_argument("--log", default="", help="benchmarks' stderr (default: OUT.log)")
    p.add_argument("--only", nargs="*", choices=BENCHES, default=list(BENCHES))
    args = p.parse_args(argv)
    args.log = args.log or args.out + ".log"
    open(args.log, "w").close()

    meta = dict(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        cpu=cpu_model(),
        cpu_count=os.cpu_count(),
        device=args.device,
        quick=args.quick,
        loadavg_before=[round(x, 2) for x in os.getloadavg()],
        versions=versions(),
        command=" ".join([os.path.relpath(sys.executable, REPO)] + sys.argv),
    )
    figures, details = [], {}
    for name in args.only:
        res = run_bench(name, args)
        res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        figures += [dict(f, benchmark=name) for f in res.pop("figures")]
        details[name] = res
    meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    results = dict(meta=meta, figures=figures, details=details)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    table = markdown(results)
    print(table)
    md = (
        args.md if args.md is not None else ("" if args.quick else os.path.join(HERE, "RESULTS.md"))
    )
    if md:
        with open(md, "w") as f:
            f.write(table)
    failed = [n for n, d in details.items() if "error" in d]
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
