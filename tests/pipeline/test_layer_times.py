"""Where a device call goes: per-layer times from ONNX Runtime's profiler, the fitted layer model
(per MAC, per weight, per layer) and `twostep series layers` on a tiny series."""

import pytest
import torch
from test_call_time import _series

from pipeline.layer_times import (
    LayerModel,
    LayerProfile,
    StageTime,
    fit_layer_model,
    profile_layers,
    stage_weights,
    time_terms,
)
from pipeline.models import build, make_spec
from pipeline.models.inference import inference_form
from pipeline.surgery import remove_filters
from twostep.cli import main


@pytest.mark.parametrize("arch", ["vgg11", "resnet18", "mobilenetv2"])
def test_stage_weights_count_every_weight_of_the_folded_model(arch):
    spec = make_spec(arch, 0.25, in_channels=1)
    model = inference_form(build(spec).eval())
    counted = sum(stage_weights(spec).values())
    weights = sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))
    assert counted == weights


@pytest.mark.parametrize("arch", ["vgg11", "resnet18", "mobilenetv2"])
def test_a_profile_sums_its_nodes_per_layer_and_the_time_between_them(arch):
    torch.manual_seed(0)
    spec = make_spec(arch, 0.25, in_channels=1)
    profile = profile_layers(build(spec).eval(), spec, calls=20, variant="v")
    names = [s.stage for s in profile.stages]
    assert names == [s.name for s in spec.layout.stages]
    assert all(s.us > 0 for s in profile.stages)  # every layer, pools included, ran nodes
    assert 0 < profile.node_us <= profile.run_us * 1.2  # the nodes run inside the run (medians)
    assert profile.macs == sum(s.macs for s in profile.stages)
    with pytest.raises(ValueError, match="calls must be at least 10"):
        profile_layers(build(spec).eval(), spec, calls=3)


def _profile(rows, other=10.0, between=20.0, variant="m") -> LayerProfile:
    stages = [StageTime(f"s{i}", macs, weights, us) for i, (macs, weights, us) in enumerate(rows)]
    return LayerProfile(variant, sum(s.us for s in stages) + other + between, stages, other,
                        sum(s.macs for s in stages))


def test_the_fit_recovers_a_linear_layer_time_and_drops_a_negative_term():
    truth = LayerModel(12.0, 0.13, 9.0)
    shapes = [(9_440_000, 9_200), (4_720_000, 294_900), (2_360_000, 589_800), (1_180_000, 1_200),
              (9_440_000, 589_800)]
    profile = _profile([(m, w, truth.stage_us(m, w)) for m, w in shapes] + [(0, 0, 5.0)])
    fitted = fit_layer_model([profile])
    fitted_terms = (fitted.us_per_mmac, fitted.us_per_kweight, fitted.us_per_layer)
    assert fitted_terms == pytest.approx((12.0, 0.13, 9.0))
    # a time that falls as weights grow fits no negative cost: that term is dropped
    falling = _profile([(m, w, 12.0 * m / 1e6 + 50.0 - w / 1e4) for m, w in shapes])
    assert fit_layer_model([falling]).us_per_kweight == 0.0
    with pytest.raises(ValueError, match="at least 3 are needed"):
        fit_layer_model([_profile([(1_000, 10, 1.0), (0, 0, 2.0)])])


def test_the_terms_of_a_call_add_up_to_the_call():
    model = LayerModel(10.0, 0.1, 5.0)
    profile = _profile([(2_000_000, 100_000, 40.0), (1_000_000, 10_000, 20.0), (0, 0, 3.0)])
    terms = time_terms(profile, model)
    assert terms.mac_us == pytest.approx(30.0) and terms.weight_us == pytest.approx(11.0)
    assert terms.fixed_us == pytest.approx(2 * 5.0 + 3.0 + 10.0 + 20.0)  # layers, pool, other, between


def test_series_layers_reports_each_call_in_terms(tmp_path, capsys):
    store = _series(tmp_path / "s")
    assert main(["series", "layers", str(store.directory), "--variants", "vgg11-base", "vgg11-s1-i2",
                 "--calls", "20"]) == 0
    out = capsys.readouterr().out
    assert "layer model (fitted on vgg11-base)" in out
    assert "vgg11-s1-i2 against vgg11-base: " in out and "fewer MACs" in out
    assert "its time falls" in out
    assert main(["series", "layers", str(store.directory), "--calls", "5"]) == 2
    assert "--calls must be in [10, 5000], got 5" in capsys.readouterr().err
    assert main(["series", "layers", str(store.directory), "--variants", "nope"]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err


def test_a_pruned_model_has_fewer_weights_in_the_layers_cut():
    spec = make_spec("vgg11", 0.25, in_channels=1)
    model = build(spec).eval()
    cut = {"conv5_1": list(range(spec.width_of()["conv5_1"] // 2))}
    _, pruned = remove_filters(model, spec, cut)
    before, after = stage_weights(spec), stage_weights(pruned)
    assert after["conv5_1"] == before["conv5_1"] // 2 and after["conv5_2"] == before["conv5_2"] // 2
    assert after["conv4_1"] == before["conv4_1"]
