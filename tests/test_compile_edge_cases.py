"""Every op's Triton kernels compile for sm_90 at the edge cases the interpreter cannot judge
(scripts/compile_edge_cases.py, in a process without TRITON_INTERPRET): integer arguments equal to 1,
which Triton passes as constants (a grey image, an image or output one pixel wide, one class), and
float64, whose code must not reach fp32-only calls. Before the fixes it came with, 26 of its first 43 cases
failed to compile."""
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "compile_edge_cases.py")


def test_every_edge_case_compiles_for_sm_90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert result.returncode == 0 and not failures, "\n".join(failures) or result.stderr[-3000:]
    assert result.stdout.count("\nok ") + result.stdout.startswith("ok ") >= 49, result.stdout
