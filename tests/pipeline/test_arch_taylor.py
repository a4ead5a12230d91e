"""Taylor and L1 scores of coupled channel groups (ResNet-18, MobileNetV2): the Taylor term of a
channel is the first-order change of the loss when the channel is scaled wherever its group
carries it (checked against autograd of that scale; finite differences are useless here, the
ReLU and max-pool kinks make them 7-20% off), and ranking leaves the model as it was."""

import pytest
import torch

from pipeline.data import DataInfo, ImageSet, normalize
from pipeline.models import build, make_spec
from pipeline.taylor import l1_scores, taylor_scores

INFO = DataInfo("synthetic", 1, 10, 32, (0.3,), (0.3,), tuple(f"c{i}" for i in range(10)))
N = 16


def _setup(arch: str, width: float):
    torch.manual_seed(0)
    spec = make_spec(arch, width, in_channels=1)
    model = build(spec)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # a random mask would make the two loss evaluations differ
    data = ImageSet(torch.randint(0, 256, (N, 1, 32, 32), dtype=torch.uint8), torch.arange(N) % 10)
    return model, spec, data


def _slope_of_scaling(model, spec, data, group, channel) -> float:
    """d loss / d f where every BatchNorm of `group` has its output `channel` multiplied by f,
    at f = 1 (autograd through the whole network, train mode as in ranking)."""
    model.train()
    f = torch.ones((), requires_grad=True)
    scale = torch.ones(spec.width_of()[group]).index_put((torch.tensor([channel]),), f.reshape(1))
    handles = [model.get_submodule(conv.bn).register_forward_hook(
        lambda _m, _i, out: out * scale.view(1, -1, 1, 1)) for conv in spec.layout.members(group)]
    try:
        loss = torch.nn.functional.cross_entropy(model(normalize(data.images, INFO)), data.labels)
        (slope,) = torch.autograd.grad(loss, f)
    finally:
        for handle in handles:
            handle.remove()
    return float(slope)


# groups whose BatchNorms run at two sides (expansion 32x32, strided depthwise 16x16), or span blocks
@pytest.mark.parametrize("arch,width,group", [("mobilenetv2", 0.25, "block2_hidden"),
                                              ("mobilenetv2", 0.25, "stage3"),
                                              ("resnet18", 0.125, "layer2")])
def test_taylor_term_is_the_first_order_loss_change_of_the_whole_group(arch, width, group):
    model, spec, data = _setup(arch, width)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    terms = taylor_scores(model, data, INFO, torch.Generator().manual_seed(0), num_batches=1,
                          batch_size=N, layers=[group])[group]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(spec.layout.members(group)) >= 2
    for channel in range(4):
        # the term is sum(activation x gradient) over the group's BatchNorms, space and the batch,
        # divided by N (a batch mean), i.e. the slope of the mean loss in f divided by N
        slope = _slope_of_scaling(model, spec, data, group, channel)
        assert float(terms[channel]) * N == pytest.approx(slope, rel=1e-3, abs=1e-6)


def test_l1_sums_the_filters_of_every_conv_of_the_group():
    model, spec, _ = _setup("resnet18", 0.125)
    scores = l1_scores(model, ["layer2"])["layer2"]
    expected = sum(model.get_submodule(c.path).weight.abs().sum(dim=(1, 2, 3))
                   for c in spec.layout.members("layer2"))
    assert len(spec.layout.members("layer2")) == 3
    assert torch.allclose(scores, expected.detach())
