"""`twostep prune` flags for Ray Tune, checked before anything runs (no Ray session)."""

import pytest

from twostep.cli import main
from twostep.commands.prune import _numbers, trial_resources


@pytest.mark.parametrize("argv, message", [
    (["--gpus-per-trial", "1"], "--gpus-per-trial only apply with --ray"),
    (["--search-divisors", "8,16", "--max-concurrent", "2"],
     "--max-concurrent, --search-divisors only apply with --ray"),
    (["--resume"], "--resume: no series at"),
    (["--trial-resource", "prune=0.25"], "--trial-resource only apply with --ray"),
])
def test_ray_flags_are_checked_before_running(argv, message, tmp_path, capsys):
    assert main(["prune", "--out", str(tmp_path / "none"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_search_values_parse_as_comma_separated_numbers():
    assert _numbers("8, 16,32", int, "--search-divisors") == (8, 16, 32)
    assert _numbers(None, float, "--search-budgets") == ()
    with pytest.raises(ValueError, match="--search-budgets takes comma-separated numbers"):
        _numbers("0.01,lots", float, "--search-budgets")


def test_ray_client_addresses_are_refused():
    from tune.launch import init_ray

    with pytest.raises(ValueError, match="ray job submit"):
        init_ray("ray://head:10001")


def test_trial_resources_parse_as_name_equals_amount():
    from tune.plan import TrialResources

    custom = trial_resources(["prune=0.25", " edge = 1"])
    assert custom == {"prune": 0.25, "edge": 1.0}
    assert TrialResources(cpus=1, gpus=0.25, custom=custom).to_ray() == {
        "cpu": 1, "gpu": 0.25, "prune": 0.25, "edge": 1.0}
    for bad in ("prune", "=1", "prune=lots", "prune=0", "prune=-1"):
        with pytest.raises(ValueError, match="--trial-resource takes NAME=AMOUNT"):
            trial_resources([bad])
    with pytest.raises(ValueError, match="given twice"):
        trial_resources(["prune=1", "prune=0.5"])
    with pytest.raises(ValueError, match="Tune reads that name itself"):
        trial_resources(["memory=1"])
    for bad in ({"prune": float("nan")}, {"prune": -1.0}, {"GPU": 1.0}):
        with pytest.raises(ValueError, match="bad custom resource"):
            TrialResources(custom=bad)
