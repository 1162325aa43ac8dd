"""Hooks removed, model state restored and parameter gradients untouched."""

import pytest
import torch
import torchvision
from torch import nn

from mmcam.classify import ClassExplainer
from mmcam.errors import MMCamError
from mmcam.guided import guided_relus
from mmcam.layers import tap as capture


def hooks_left(model):
    return sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
        for m in model.modules()
    )


def patched_relus(model):
    return sum("forward" in m.__dict__ for m in model.modules())


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=5)


def test_state_untouched_after_explain(resnet):
    resnet.train()
    resnet.layer2.eval()  # mixed flags must come back exactly
    resnet.fc.weight.requires_grad_(False)
    resnet.conv1.weight.grad = torch.full_like(resnet.conv1.weight, 7.0)
    flags = {n: m.training for n, m in resnet.named_modules()}
    req = {n: p.requires_grad for n, p in resnet.named_parameters()}
    state = {k: v.clone() for k, v in resnet.state_dict().items()}
    ClassExplainer(resnet, layer="layer4").explain_pixels(torch.randn(2, 3, 64, 64), guided=True)
    assert {n: m.training for n, m in resnet.named_modules()} == flags
    assert {n: p.requires_grad for n, p in resnet.named_parameters()} == req
    assert hooks_left(resnet) == 0 and patched_relus(resnet) == 0
    assert torch.equal(resnet.conv1.weight.grad, torch.full_like(resnet.conv1.weight, 7.0))
    assert all(p.grad is None for n, p in resnet.named_parameters() if n != "conv1.weight")
    # eval mode inside: BN running stats not updated
    for k, v in resnet.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_hooks_removed_when_the_body_raises(resnet):
    with pytest.raises(RuntimeError, match="boom"):
        with capture(resnet, "layer3"):
            raise RuntimeError("boom")
    assert hooks_left(resnet) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with guided_relus(resnet):
            raise RuntimeError("boom")
    assert patched_relus(resnet) == 0


def test_hooks_removed_when_the_model_raises(resnet):
    resnet.train()
    with pytest.raises(RuntimeError):  # wrong channel count fails inside the forward
        ClassExplainer(resnet, layer="layer4").explain_pixels(
            torch.randn(1, 4, 32, 32), guided=True)
    assert hooks_left(resnet) == 0 and patched_relus(resnet) == 0
    assert all(m.training for m in resnet.modules())


def test_inplace_op_after_layer_does_not_corrupt_capture():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1, bias=False)
            nn.init.constant_(self.conv.weight, -1.0)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.act(self.conv(x)).sum(dim=(1, 2, 3)).unsqueeze(1)

    net = Net()
    x = torch.tensor([[[[1.0, -2.0]]]])
    # A = conv(x) = [-1, 2]; y = sum(relu(A)) so G = [0, 1]; counterfactual Grad-CAM =
    # relu(-mean(G) * A) = relu(-0.5 * [-1, 2]) = [0.5, 0]. Had the in-place ReLU after the
    # layer clobbered the captured A to [0, 2], the map would be [0, 0].
    for strategy in ("copies", "vjp"):
        r = ClassExplainer(net, layer="conv", method="counterfactual",
                           strategy=strategy).explain_pixels(x, torch.tensor([[0]]))
        assert torch.equal(r["layer_maps"][0, 0], torch.tensor([[0.5, 0.0]])), strategy
    assert hooks_left(net) == 0


def test_layer_errors(resnet):
    with pytest.raises(MMCamError, match="no layer named 'layer9'"):
        ClassExplainer(resnet, layer="layer9").explain_pixels(torch.randn(1, 3, 32, 32))

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(3, 2, 3)
            self.unused = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.used(x).mean(dim=(2, 3))

    skip = Skip()
    with pytest.raises(MMCamError, match="never reached layer 'unused'"):
        ClassExplainer(skip, layer="unused").explain_pixels(torch.randn(1, 3, 8, 8))
    assert hooks_left(skip) == 0
