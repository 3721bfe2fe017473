"""Runs every op's benchmark and summarises the run: DIR/summary.md and PNG plots.

    python benchmarks/run_all.py [--quick] --out DIR

Each benchmarks/bench_*.py runs in its own process (a failing or missing peer cannot stop
the others) and appends its rows to benchmarks/results/results.csv and DIR/results.csv.
From DIR/results.csv this writes:
  - DIR/summary.md: per op, every case/dtype/pass with each provider's GB/s, % of copy
    bandwidth and speedup against torch eager;
  - DIR/<op>_bandwidth.png: % of copy bandwidth against size, one line per provider;
  - DIR/<op>_speedup.png: speedup of recipe_kernels against each peer.
--quick fits inside scripts/gpu_check.sh's time budget: each op's script gets at most
QUICK_SECONDS_PER_SCRIPT seconds.
"""
import argparse
import csv
import glob
import os
import subprocess
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import require_cuda  # noqa: E402
OURS = ("recipe_kernels/triton", "recipe_kernels/cuda")
QUICK_SECONDS_PER_SCRIPT = 75


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summary_markdown(rows):
    """Markdown tables, one per op, of the rows of one run."""
    by_op = defaultdict(list)
    for row in rows:
        by_op[row["op"]].append(row)
    lines = []
    for op, op_rows in by_op.items():
        first = op_rows[0]
        lines += [f"## {op}", "", f"{first['device']}, torch {first['torch']}, triton {first['triton']}, "
                  f"{first['date']}, commit {first['commit']}", "",
                  "| case | dtype | pass | provider | ms | GB/s | % copy bw | speedup vs torch |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in op_rows:
            lines.append(f"| {row['case']} | {row['dtype']} | {row['pass']} | {row['provider']} | "
                         f"{float(row['ms_p50']):.3f} | {float(row['gbps']):.0f} | {float(row['pct_copy_bw']):.1f} | "
                         f"{float(row['speedup_vs_torch']):.2f} |")
        lines.append("")
    return "\n".join(lines)


def speedups_against_peers(rows):
    """{(op, case, dtype, pass, peer): peer's ms / our best ms} for every peer measured beside us."""
    groups = defaultdict(dict)
    for row in rows:
        groups[(row["op"], row["case"], row["dtype"], row["pass"])][row["provider"]] = float(row["ms_p50"])
    result = {}
    for key, providers in groups.items():
        ours = [providers[name] for name in OURS if name in providers]
        if not ours:
            continue
        for peer, ms in providers.items():
            if not peer.startswith("recipe_kernels/"):  # variants like recipe_kernels/triton+graph are not peers
                result[key + (peer,)] = ms / min(ours)
    return result


def plot(rows, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for op in sorted({row["op"] for row in rows}):
        op_rows = [row for row in rows if row["op"] == op]
        figure, axis = plt.subplots(figsize=(8, 4))
        series = defaultdict(list)
        for row in op_rows:
            series[(row["provider"], row["dtype"], row["pass"])].append((row["case"], float(row["pct_copy_bw"])))
        for (provider, dtype, pass_name), points in sorted(series.items()):
            axis.plot([case for case, _ in points], [pct for _, pct in points], marker="o",
                      label=f"{provider} {dtype} {pass_name}")
        axis.set(title=f"{op}: % of copy bandwidth", xlabel="case", ylabel="% of copy bandwidth")
        axis.legend(fontsize=6, ncol=2)
        figure.tight_layout()
        path = os.path.join(out_dir, f"{op}_bandwidth.png")
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)

        speedups = speedups_against_peers(op_rows)
        if speedups:
            figure, axis = plt.subplots(figsize=(8, 4))
            labels = [f"{case} {dtype} {pass_name}\nvs {peer}" for (_, case, dtype, pass_name, peer) in speedups]
            axis.bar(range(len(speedups)), list(speedups.values()))
            axis.axhline(1.0, color="black", linewidth=0.8)
            axis.set_xticks(range(len(speedups)), labels, rotation=90, fontsize=5)
            axis.set(title=f"{op}: speedup of recipe_kernels against each peer", ylabel="speedup (x)")
            figure.tight_layout()
            path = os.path.join(out_dir, f"{op}_speedup.png")
            figure.savefig(path, dpi=100)
            plt.close(figure)
            written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer cases, for scripts/gpu_check.sh")
    parser.add_argument("--out", required=True, help="folder for results.csv, summary.md and plots")
    args = parser.parse_args(argv)
    require_cuda()  # one clear line on a machine without a GPU, instead of four failures
    os.makedirs(args.out, exist_ok=True)
    failed = []
    for script in sorted(glob.glob(os.path.join(HERE, "bench_*.py"))):
        command = [sys.executable, script, "--out", args.out] + (["--quick"] if args.quick else [])
        print("$", " ".join(command), flush=True)
        try:
            # --quick gives each op a share of gpu_check.sh's budget; rows already written stay.
            if subprocess.run(command, timeout=QUICK_SECONDS_PER_SCRIPT if args.quick else None).returncode != 0:
                failed.append(os.path.basename(script))
        except subprocess.TimeoutExpired:
            failed.append(f"{os.path.basename(script)} (stopped after {QUICK_SECONDS_PER_SCRIPT} s)")
    results = os.path.join(args.out, "results.csv")
    if os.path.exists(results):
        rows = read_rows(results)
        with open(os.path.join(args.out, "summary.md"), "w") as f:
            f.write(summary_markdown(rows))
        for path in plot(rows, args.out):
            print("wrote", path)
    if failed:
        print("failed:", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
