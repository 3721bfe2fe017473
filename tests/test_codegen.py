"""The GPU code Triton generates for the dropout kernels (sm_90, compiled here without a GPU):
16-byte vector loads and stores, and Philox not replicated across threads."""
import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "triton_codegen_check.py")


@pytest.fixture(scope="module")
def report():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0 and "ptxas" in result.stderr:
        pytest.skip(f"Triton cannot compile for sm_90 here: {result.stderr.splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-3000:]
    return {line.split("  ")[0].strip(): line for line in result.stdout.splitlines() if "per element" in line}


def multiplies_per_element(line):
    return float(re.search(r"per element: ([\d.]+) mul.hi", line).group(1))


def test_dropout_moves_16_bytes_per_instruction_and_shares_each_philox_call(report):
    lines = [line for name, line in report.items() if name.startswith("dropout bf16") or name.startswith("dropout fp32")]
    assert len(lines) == 4
    for line in lines:
        assert "ld.v4.b32" in line and "st.v4.b32" in line, line
        # One Philox4x32-7 call (at most 14 mul.hi) serves four elements: at most 3.5 per element.
        assert multiplies_per_element(line) <= 3.5, line


def test_drop_path_and_bias_backward_compile_with_vector_stores(report):
    for name, line in report.items():
        if name.startswith(("drop_path", "dropout bias backward")):
            assert re.search(r"st\.v\d\.b32", line), line


def test_drop_path_residual_rows_move_16_bytes_per_instruction(report):
    lines = [line for name, line in report.items() if name.startswith("drop_path_residual rows")]
    assert len(lines) == 3
    for line in lines:
        assert "ld.v4.b32" in line and "st.v4.b32" in line, line
