"""The main job, `python -m recipe_kernels.demo`: end to end on two epochs (CPU, torch backend), its flags
checked before training, and its plot."""
import re
import subprocess
import sys

import pytest
import torch

from recipe_kernels import _backend, demo


def test_demo_trains_compares_plots_and_ends_with_the_accuracy_line(tmp_path):
    plot = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, "-m", "recipe_kernels.demo", "--epochs", "2", "--compare",
                             "--plot", str(plot), "--device", "cpu"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    match = re.fullmatch(r"test accuracy: model=(0\.\d{4}|1\.0000) ema=(0\.\d{4}|1\.0000)", lines[-1])
    assert match, lines[-1]
    assert float(match.group(2)) > 0.5  # two epochs already learn the digits (chance is 0.1)
    assert any(line.strip().startswith("plain torch") for line in lines)  # the comparison table
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # stderr is a pipe here, as in a redirected log: no progress bar redrawn with carriage returns.
    assert "\r" not in result.stderr, result.stderr[:300]


def error_of(capsys, argv):
    """The demo's command line on `argv`: it must exit with status 2 and one line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        demo.parse_args(argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and message.startswith("python -m recipe_kernels.demo: error: "), message
    return message


@pytest.mark.parametrize("argv, expected", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be at least 0, got -1"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["--device", "cpu", "--backend", "cuda"], "--backend cuda on cpu: "),
])
def test_bad_flags_stop_before_training(capsys, argv, expected):
    assert expected in error_of(capsys, argv)


def test_device_cuda_without_a_gpu_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device cuda: no GPU is visible to torch" in error_of(capsys, ["--device", "cuda"])


def test_backend_cuda_without_the_extension_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(_backend, "_C", None)
    monkeypatch.setattr(_backend, "CUDA_EXTENSION_ERROR", "the CUDA extension recipe_kernels._C is not built")
    message = error_of(capsys, ["--backend", "cuda"])
    assert "--backend cuda" in message and "recipe_kernels._C is not built" in message


def test_a_plot_path_that_cannot_be_written_stops_before_training(tmp_path, capsys):
    assert "No such file or directory" in error_of(capsys, ["--plot", str(tmp_path / "missing" / "curves.png")])
    assert "Is a directory" in error_of(capsys, ["--plot", str(tmp_path)])


def test_checking_the_plot_path_leaves_no_file_behind(tmp_path):
    path = tmp_path / "curves.png"
    args = demo.parse_args(["--plot", str(path), "--device", "cpu"])
    assert args.plot == str(path) and not path.exists()


def test_every_flag_has_help_and_the_help_says_what_the_recipe_is():
    parser = demo.build_parser()
    assert all(action.help for action in parser._actions)
    description = parser.description.strip().splitlines()
    assert len(description) == 2
    for ingredient in ("warm-up", "cosine", "CutMix/MixUp", "label-smoothed", "dropout", "drop path", "EMA"):
        assert ingredient in parser.description
    assert "85 s" in parser.epilog and "--epochs 1" in parser.epilog  # the interpreter's cost, and the way out


def test_a_bad_flag_on_the_command_line_prints_one_line_and_no_traceback():
    result = subprocess.run([sys.executable, "-m", "recipe_kernels.demo", "--batch-size", "0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "python -m recipe_kernels.demo: error: --batch-size must be at least 1, got 0\n"


def test_the_plot_shows_every_epoch_and_keeps_one_colour_per_run():
    pytest.importorskip("matplotlib")
    runs = {"recipe_kernels": {"loss": [2.3, 1.2, 0.6], "val_model": [0.12, 0.80, 0.96], "val_ema": [0.10, 0.70, 0.97]},
            "plain torch": {"loss": [2.3, 1.3, 0.7], "val_model": [0.15, 0.75, 0.95], "val_ema": [0.11, 0.65, 0.96]}}
    figure = demo.curves_figure(runs)
    loss_axis, accuracy_axis = figure.axes
    assert accuracy_axis.get_ylim()[0] <= 0.10  # epoch 1 (EMA at 0.10) is inside the axis
    loss_colours = {line.get_label(): line.get_color() for line in loss_axis.get_lines()}
    assert len(set(loss_colours.values())) == len(runs)
    for line in accuracy_axis.get_lines():
        run = line.get_label().split(":")[0]
        assert line.get_color() == loss_colours[run], line.get_label()
