"""The benchmark summary: aggregation of result rows (the timings themselves need a GPU)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import run_all  # noqa: E402
from common import COLUMNS  # noqa: E402


def make_row(provider, ms, case="8192x8192"):
    row = dict.fromkeys(COLUMNS, "x")
    row.update(op="dropout", case=case, dtype="bfloat16", provider=provider, ms_p50=str(ms), gbps="100",
               pct_copy_bw="50", speedup_vs_torch="1")
    row["pass"] = "fwd"
    return row


def test_speedups_compare_our_best_backend_with_each_peer():
    rows = [make_row("recipe_kernels/triton", 2.0), make_row("recipe_kernels/cuda", 1.0),
            make_row("recipe_kernels/triton+graph", 0.5),  # a variant of ours: neither ours nor a peer
            make_row("torch", 3.0), make_row("torch.compile", 1.5), make_row("torch", 9.0, case="other")]
    speedups = run_all.speedups_against_peers(rows)
    assert speedups == {("dropout", "8192x8192", "bfloat16", "fwd", "torch"): 3.0,
                        ("dropout", "8192x8192", "bfloat16", "fwd", "torch.compile"): 1.5}


def test_summary_lists_every_row_under_its_op(tmp_path):
    rows = [make_row("recipe_kernels/triton", 2.0), make_row("torch", 3.0)]
    text = run_all.summary_markdown(rows)
    assert text.startswith("## dropout")
    assert text.count("| 8192x8192 | bfloat16 | fwd |") == 2
    written = run_all.plot(rows, str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == ["dropout_bandwidth.png", "dropout_speedup.png"]
