"""Shared benchmark harness: copy bandwidth, rotated-input timing, result rows.

Method (docs/benchmark-method.md): count the minimal bytes of each op (every input read
once, every output written once), time with triton.testing.do_bench medians after
warm-up while rotating several input sets so that data is not L2-resident, measure
the device's copy bandwidth in the same run, and append one row per (case, pass,
provider) to benchmarks/results/results.csv. Peers that are not installed are skipped
with a line saying so.
"""
import argparse
import csv
import datetime
import math
import os
import subprocess

import torch

RESULTS_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "results.csv")
COLUMNS = ["op", "case", "dtype", "pass", "provider", "ms_p50", "gbps", "pct_copy_bw", "speedup_vs_torch",
           "device", "torch", "triton", "date", "commit"]
ROTATION_BYTES = 512 << 20  # enough input sets to cycle through several times the L2 of an H100/H200


def parse_args(doc, quick_help, cpu_case=False):
    """The command line every benchmark takes: [--quick] [--out DIR]; with cpu_case, also
    [--device auto|cuda|cpu] (auto: cuda when a GPU is visible)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", default=None, help="also append the rows to DIR/results.csv")
    if cpu_case:
        parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                            help="where to run (auto: cuda when a GPU is visible, else the CPU case)")
    args = parser.parse_args()
    if cpu_case and args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def require_cuda():
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks need a CUDA GPU; none is visible here")


def do_bench_ms(fn):
    """Median milliseconds of fn() after warm-up (triton.testing.do_bench also flushes L2)."""
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def rotating(make_inputs, bytes_per_set):
    """A list of input sets, as many as make a ROTATION_BYTES working set (at least 2, at most 8)."""
    count = max(2, min(8, math.ceil(ROTATION_BYTES / max(1, bytes_per_set))))
    return [make_inputs() for _ in range(count)]


def time_rotating(fn, input_sets):
    """Median ms of fn(*inputs), each call taking the next input set."""
    position = [0]

    def call():
        fn(*input_sets[position[0] % len(input_sets)])
        position[0] += 1

    return do_bench_ms(call)


def copy_bandwidth_gbps(nbytes=1 << 30):
    """Device-to-device copy bandwidth: (bytes read + bytes written) / time of a large copy."""
    source = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    ms = do_bench_ms(lambda: target.copy_(source))
    return 2 * nbytes / ms / 1e6


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


class Recorder:
    """Collects timings of one benchmark run and writes them as rows of results.csv."""

    def __init__(self, op):
        import triton
        self.op = op
        self.copy_gbps = copy_bandwidth_gbps()
        self.rows = []
        self.context = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                            date=datetime.date.today().isoformat(), commit=_commit())
        print(f"{op}: {self.context['device']}, copy bandwidth {self.copy_gbps:.0f} GB/s")

    def add(self, case, dtype, pass_name, provider, ms, minimal_bytes):
        row = dict(op=self.op, case=case, dtype=str(dtype).replace("torch.", ""), **{"pass": pass_name},
                   provider=provider, ms_p50=ms, gbps=minimal_bytes / ms / 1e6)
        self.rows.append(row)
        # Printed now as well: a script stopped before finish() (run_all.py --quick's time limit) keeps
        # its measurements in the log.
        print(f"measured {case} {row['dtype']} {pass_name} {provider}: {ms:.4f} ms, {row['gbps']:.0f} GB/s",
              flush=True)

    def finish(self, out_dir=None):
        """Fills in % of copy bandwidth and speedup against torch eager, appends rows, returns them."""
        torch_ms = {(r["case"], r["dtype"], r["pass"]): r["ms_p50"] for r in self.rows if r["provider"] == "torch"}
        for row in self.rows:
            row["pct_copy_bw"] = 100.0 * row["gbps"] / self.copy_gbps
            base = torch_ms.get((row["case"], row["dtype"], row["pass"]))
            row["speedup_vs_torch"] = base / row["ms_p50"] if base else float("nan")
            row.update(self.context)
        append_rows("results.csv", COLUMNS, self.rows, out_dir)
        for row in self.rows:
            print(f"{row['case']:>14} {row['dtype']:>8} {row['pass']:>7} {row['provider']:>22} "
                  f"{row['ms_p50']:8.3f} ms {row['gbps']:7.0f} GB/s {row['pct_copy_bw']:5.1f}% "
                  f"x{row['speedup_vs_torch']:.2f} vs torch")
        return self.rows


def append_rows(file_name, columns, rows, out_dir=None):
    """Appends rows to benchmarks/results/<file_name> and, with out_dir, to out_dir/<file_name>."""
    paths = [os.path.join(os.path.dirname(RESULTS_CSV), file_name)]
    if out_dir and os.path.realpath(out_dir) != os.path.realpath(os.path.dirname(RESULTS_CSV)):  # once, not twice
        paths.append(os.path.join(out_dir, file_name))
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        new_file = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            if new_file:
                writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})


def write_table(path, rows):
    """Writes rows (dicts with the same keys) to the CSV file `path`, replacing it: for tables that
    describe the current code (the static model's), not a history of measurements."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {path}")


def optional_peer(module_name):
    """Imports a peer library, or prints that it is skipped and returns None."""
    try:
        return __import__(module_name)
    except ImportError as exc:
        print(f"skipping peer {module_name}: not installed ({exc})")
        return None
