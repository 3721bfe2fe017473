"""The main job, `python -m recipe_kernels.demo`, end to end on one epoch (CPU, torch backend)."""
import re
import subprocess
import sys


def test_demo_trains_compares_plots_and_ends_with_the_accuracy_line(tmp_path):
    plot = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, "-m", "recipe_kernels.demo", "--epochs", "2", "--compare",
                             "--plot", str(plot), "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    match = re.fullmatch(r"test accuracy: model=(0\.\d{4}|1\.0000) ema=(0\.\d{4}|1\.0000)", lines[-1])
    assert match, lines[-1]
    assert float(match.group(2)) > 0.5  # two epochs already learn the digits (chance is 0.1)
    assert any(line.strip().startswith("plain torch") for line in lines)  # the comparison table
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
