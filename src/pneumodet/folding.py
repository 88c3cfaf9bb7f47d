"""Frozen BatchNorms folded into the convolutions before them: the same function, one pass fewer over the
activations. Classes of existing modules are swapped (at build time, once): weights and state_dict keys stay where
they were, so every checkpoint loads."""

from __future__ import annotations

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d


class FoldedConv2d(nn.Conv2d):
    """A bias-free convolution followed by a frozen BatchNorm, run as one convolution: the BatchNorm's scale
    multiplies the weights and its shift is the bias. The same function (to float rounding) and the same
    gradient for the weights, without a pass over the activations for the BatchNorm (and under bf16 autocast,
    without the float32 copy a frozen BatchNorm's float32 scale made of each activation). The class of an
    existing module is swapped: its weights and state_dict keys stay where they were."""

    def forward(self, x):
        bn = self.__dict__["folded_bn"]
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        return self._conv_forward(x, self.weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale)


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen BatchNorm whose scale and shift a :class:`FoldedConv2d` before it applies: here, the identity."""

    def forward(self, x):
        return x


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold each frozen BatchNorm into the convolution that feeds it; return how many were folded.

    Pairs are found where the order is certain: ``convK`` then ``bnK`` in one module (ResNet's stem and
    blocks), or a convolution then a BatchNorm next to each other in an ``nn.Sequential`` (downsample branches,
    MobileNet's blocks)."""
    folded = 0
    for parent in module.modules():
        children = dict(parent.named_children())
        pairs = [(c, children.get("bn" + name[4:])) for name, c in children.items() if name.startswith("conv")]
        if isinstance(parent, nn.Sequential):
            ordered = list(children.values())
            pairs += list(zip(ordered, ordered[1:], strict=False))
        for conv, bn in pairs:
            if (type(conv) is nn.Conv2d and type(bn) is FrozenBatchNorm2d and conv.bias is None
                    and conv.padding_mode == "zeros" and conv.out_channels == bn.weight.numel()):
                conv.__class__, bn.__class__ = FoldedConv2d, FoldedFrozenBatchNorm2d
                conv.__dict__["folded_bn"] = bn  # not a submodule: the state_dict keeps bn where it was
                folded += 1
    return folded
