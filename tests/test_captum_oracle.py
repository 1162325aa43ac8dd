"""Grad-CAM and Guided Grad-CAM equal captum's on torchvision nets with random weights."""

import pytest
import torch
import torchvision

captum_attr = pytest.importorskip("captum.attr")

from mmcam.cam import PATH_STEPS  # noqa: E402
from mmcam.classify import ClassExplainer  # noqa: E402


@pytest.mark.parametrize("name,layer", [("vgg11", "features.19"), ("resnet18", "layer4")])
def test_matches_captum(name, layer):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([3, 500])
    r = ClassExplainer(model, layer=layer, align="bilinear").explain_pixels(
        x, target[:, None], guided=True)
    lay = model.get_submodule(layer)
    ref = captum_attr.LayerGradCam(model, lay).attribute(x, target=target, relu_attributions=True)
    ref_up = captum_attr.LayerAttribution.interpolate(ref, (64, 64), interpolate_mode="bilinear")
    assert ref_up.abs().max() > 0
    torch.testing.assert_close(r["layer_maps"][:, 0], ref[:, 0], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(r["maps"][:, 0], ref_up[:, 0], rtol=1e-5, atol=1e-8)
    gg = captum_attr.GuidedGradCam(model, lay).attribute(
        x, target=target, interpolate_mode="bilinear"
    )
    assert gg.abs().max() > 0
    torch.testing.assert_close(r["guided_gradcam"][:, 0], gg, rtol=1e-5, atol=1e-10)
    gb = captum_attr.GuidedBackprop(model).attribute(x, target=target)
    torch.testing.assert_close(r["guided_backprop"][:, 0], gb, rtol=1e-5, atol=1e-10)


def test_logprob_score_matches_captum_on_log_softmax():
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    ex = ClassExplainer(model, layer="layer4", score="logprob")
    r = ex.explain_pixels(x, torch.tensor([[7]]))

    def logp(inp):
        return torch.log_softmax(model(inp), dim=1)

    ref = captum_attr.LayerGradCam(logp, model.layer4).attribute(
        x, target=7, relu_attributions=True
    )
    torch.testing.assert_close(r["layer_maps"][:, 0], ref[:, 0], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name,layer", [("vgg11", "features.19"), ("resnet18", "layer4")])
def test_integrated_matches_captum_layer_integrated_gradients(name, layer):
    """method="integrated" is captum's LayerIntegratedGradients from the image filled with
    its mean color (midpoint rule, PATH_STEPS points), summed over channels, with a ReLU;
    before the ReLU it sums to y(x) - y(baseline) as captum's convergence delta says."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([3, 500])
    r = ClassExplainer(model, layer=layer, method="integrated", align="bilinear"
                       ).explain_pixels(x, target[:, None])
    base = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    lig = captum_attr.LayerIntegratedGradients(model, model.get_submodule(layer))
    attr, delta = lig.attribute(x, baselines=base, target=target, n_steps=PATH_STEPS,
                                method="riemann_middle", return_convergence_delta=True)
    ref = torch.relu(attr.sum(dim=1))
    assert ref.abs().max() > 0
    torch.testing.assert_close(r["layer_maps"][:, 0], ref, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        gap = model(x)[[0, 1], target] - model(base)[[0, 1], target]
    # captum's delta: sum(attr) - (y(x) - y(base)), the midpoint rule's error
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)) - gap, delta, rtol=1e-3, atol=1e-4)
