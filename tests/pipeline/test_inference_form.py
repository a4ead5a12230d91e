import pytest
import torch
from torch import nn

from pipeline.models import build, make_spec
from pipeline.models.inference import inference_form
from pipeline.split import split_model


def _trained_like(spec):
    """A model whose BatchNorms hold non-trivial statistics and affine parameters."""
    torch.manual_seed(0)
    model = build(spec)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model.eval()


def test_the_inference_form_computes_the_same_function_at_every_split():
    spec = make_spec("vgg11", 0.125, in_channels=1)
    model = _trained_like(spec)
    folded = inference_form(model)
    x = torch.randn(4, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
        for split in ("conv1_1", "pool2", "conv4_2"):
            head, tail = split_model(folded, split)
            reference_head, _ = split_model(model, split)
            torch.testing.assert_close(head(x), reference_head(x), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(tail(head(x)), model(x), rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert [n for n, _ in folded.ordered_stages()] == [n for n, _ in model.ordered_stages()]


def test_the_original_model_is_left_untouched():
    spec = make_spec("vgg11", 0.125, in_channels=1)
    model = _trained_like(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inference_form(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == len(spec.widths)


def test_a_wrongly_folded_bias_would_be_caught():
    # guards the test above: a fold that forgets the BN shift changes the output
    spec = make_spec("vgg11", 0.125, in_channels=1)
    model = _trained_like(spec)
    folded = inference_form(model)
    folded.stages["conv1_1"][0].bias.data.zero_()
    with torch.inference_mode(), pytest.raises(AssertionError):
        x = torch.randn(2, 1, 32, 32)
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
