import subprocess
import sys

import pytest

from twostep.cli import VERBS, main


def test_help_lists_every_verb():
    result = subprocess.run([sys.executable, "-m", "twostep", "--help"], capture_output=True,
                            text=True, check=True)
    for verb in ("train", "eval"):
        assert verb in result.stdout
    assert all(verb in VERBS for verb in ("train", "eval", "prune", "serve", "demo"))



def test_top_level_help_imports_neither_torch_nor_any_verb():
    code = ("import sys\nfrom twostep.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('twostep.commands.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: twostep {verb}" in capsys.readouterr().out


def test_train_then_eval_round_trip(learnable_fashion_dir, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    code = main(["train", "--data-dir", str(learnable_fashion_dir), "--arch", "vgg11",
                 "--width", "0.125", "--epochs", "3", "--lr", "0.05", "--no-augment", "--quiet",
                 "--out", str(out)])
    assert code == 0
    assert out.is_file() and out.with_suffix(".config.json").is_file()
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    accuracy = float(printed.strip().split("test accuracy ")[1].split()[0])
    assert accuracy > 0.3  # ten bar classes, well above chance after three epochs


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--arch", "vgg99"], "unknown model 'vgg99'"),
        (["train", "--width", "0"], "width must be in"),
        (["train", "--width", "-0.5"], "width must be in"),
        (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["train", "--device", "tpu"], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["prune", "--step1-budget", "2"], "step1_budget must be in"),
        (["prune", "--criterion", "random"], "criterion must be one of 'taylor' or 'l1', got 'random'"),
        (["prune", "--step2-steps", "many"], "step2_steps: Input should be a valid integer"),
        (["train", "--epochs", "1.5"], "epochs: Input should be a valid integer"),
        (["series", "show", "/nonexistent"], "no model series"),
        (["train", "--data-dir", "/nonexistent/dir", "--epochs", "1"],
         "apt-get install dataset-fashion-mnist"),
        (["train", "--config", "/nonexistent.toml"], "config file '/nonexistent.toml'"),
        (["eval", "/nonexistent.safetensors"], "does not exist"),
    ],
)
def test_bad_arguments_give_a_clear_error(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_config_key_and_corrupt_checkpoint(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('arch = "vgg11"\nlearning_rate = 0.1\n')
    assert main(["train", "--config", str(tmp_path / "c.toml")]) == 2
    assert "unknown config key(s) ['learning_rate']" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    assert main(["eval", str(tmp_path / "bad.safetensors")]) == 2
    assert "safetensors" in capsys.readouterr().err


def test_runtime_failures_exit_1_with_one_line_usage_errors_2(capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["device", "plan", "--url", f"http://127.0.0.1:{port}", "--bandwidth", "1mbit"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("twostep device: failed:") and str(port) in err[0]
    assert main(["device", "plan", "--url", "ftp://x", "--bandwidth", "1mbit"]) == 2
    capsys.readouterr()
    assert main(["device", "plan", "--url", f"http://127.0.0.1:{port}", "--idle-ms", "5"]) == 2
    assert "--time-heads" in capsys.readouterr().err


def test_train_and_prune_read_their_section_of_a_sectioned_file(tmp_path, capsys):
    from pipeline.config import PruneConfig, TrainConfig, make_config

    path = tmp_path / "c.toml"
    path.write_text('[train]\narch = "vgg13"\nepochs = 2\n\n[prune]\nstep2_steps = 3\n\n'
                    '[demo]\nslowdown = 2.0\n')
    assert make_config(TrainConfig, path, "train").arch == "vgg13"
    assert make_config(PruneConfig, path, "prune").step2_steps == 3
    assert make_config(TrainConfig, path, "train", epochs=7).epochs == 7  # flags override
    path.write_text('[train]\narch = "vgg13"\n\n[serve]\nport = 1\n')
    assert main(["train", "--config", str(path)]) == 2
    assert "unknown section(s) or key(s) ['serve']" in capsys.readouterr().err
