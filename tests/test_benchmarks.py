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


# A division's fast path guarded by FCHK, its slow-path call, a call that FCHK does not guard (P0 rewritten
# by ISETP), and the two subroutines.
DIVISION_LISTING = """
        /*0000*/                   MUFU.RCP R17, R136 ;
        /*0010*/                   FCHK P0, R6, R136 ;
        /*0020*/                   FFMA R14, -R136, R17, 1 ;
        /*0030*/              @!P0 BRA 0x80 ;
        /*0040*/                   MOV R17, R6 ;
        /*0050*/                   MOV R18, 0x70 ;
        /*0060*/                   CALL.REL.NOINC 0xd0 ;
        /*0070*/                   MOV R138, R14 ;
        /*0080*/                   ISETP.GE.AND P0, PT, R1, R2, PT ;
        /*0090*/               @P0 BRA 0xc0 ;
        /*00a0*/                   CALL.REL.NOINC 0x100 ;
        /*00b0*/                   MOV R1, R2 ;
        /*00c0*/                   EXIT ;
        /*00d0*/                   SHF.R.U32.HI R201, RZ, 0x17, R115 ;
        /*00e0*/                   RET.REL.NODEC R114 0x0 ;
        /*00f0*/                   MOV R3, R4 ;
        /*0100*/                   FADD R1, R1, R2 ;
        /*0110*/                   RET.REL.NODEC R114 0x0 ;
"""


def test_division_slow_paths_are_the_fchk_guarded_calls_and_their_subroutines():
    import sass
    slow = sass.division_slow_paths(sass.parse(DIVISION_LISTING))
    assert slow == {0x40, 0x50, 0x60, 0x70, 0xd0, 0xe0}


def test_basic_blocks_start_at_branch_targets_and_after_branches_exits_calls_and_returns():
    import sass
    blocks = sass.basic_blocks(sass.parse(DIVISION_LISTING))
    assert [[i.address for i in block] for block in blocks] == [
        [0x00, 0x10, 0x20, 0x30], [0x40, 0x50, 0x60], [0x70], [0x80, 0x90], [0xa0], [0xb0], [0xc0], [0xd0, 0xe0],
        [0xf0], [0x100, 0x110]]


def test_every_benchmark_takes_the_arguments_run_all_passes(tmp_path):
    """run_all.py (scripts/gpu_check.sh's benchmarks) runs each bench_*.py with --quick --out DIR; a
    script whose parser refuses them fails on the GPU machine, where nothing can be fixed. Each
    script runs in one subprocess up to its argument parsing, then stops."""
    import subprocess
    benchmarks = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    code = f"""
import argparse, glob, os, runpy, sys
parse_args = argparse.ArgumentParser.parse_args
class Parsed(Exception):
    pass
def parse_then_stop(self, args=None, namespace=None):
    parse_args(self, args, namespace)
    raise Parsed
argparse.ArgumentParser.parse_args = parse_then_stop
for script in sorted(glob.glob(os.path.join({benchmarks!r}, "bench_*.py"))):
    sys.argv = [script, "--quick", "--out", {str(tmp_path)!r}]
    try:
        runpy.run_path(script, run_name="__main__")
        print(os.path.basename(script), "ran past its parser")
    except Parsed:
        print(os.path.basename(script), "parsed")
    except SystemExit as error:
        print(os.path.basename(script), "exit", error.code)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("bench_")]
    scripts = sorted(os.path.basename(path) for path in os.listdir(benchmarks)
                     if path.startswith("bench_") and path.endswith(".py"))
    assert len(lines) == len(scripts) and "bench_host.py parsed" in lines, result.stdout + result.stderr
    assert all(line.endswith(" parsed") for line in lines), result.stdout + result.stderr
