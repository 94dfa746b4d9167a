"""The student network: a dense backbone, a unit pixel-embedding head and a projection into CLIP's space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NetworkConfig:
    backbone: str = "resnet50"  # a key of BACKBONES
    output_stride: int = 16  # 16 to train, 8 for finer test-time maps (HSG); ResNets take 8 or 16
    embedding_dim: int = 128
    clip_dim: int = 0  # the teacher's embedding width; 0 = the trainer takes it from the CLIP features
    projection_hidden: int = 512
    backbone_weights: str = ""  # optional torchvision/timm state_dict file for the backbone

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone {self.backbone!r} unknown (choose from {', '.join(BACKBONES)})")
        strides = BACKBONES[self.backbone].strides
        if self.output_stride not in strides:
            raise ValueError(f"backbone {self.backbone} supports output_stride {strides}, not {self.output_stride}")
        if min(self.embedding_dim, self.projection_hidden) < 1 or self.clip_dim < 0:
            raise ValueError("embedding_dim and projection_hidden must be positive, clip_dim positive or 0")


class ModelOutput(NamedTuple):
    embeddings: torch.Tensor  # [B, E, h, w], unit vectors per pixel
    clip: torch.Tensor  # [B, Dc, h, w], the projection into CLIP's space (not normalised)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvBackbone(nn.Module):
    """A convolutional `body` run on channels-last activations: the small backbone's forward and
    backward measured 22% faster so on the CPU box (oneDNN), the layout cuDNN prefers under autocast;
    the same arithmetic, and the parameters keep their layout (DeepSpeed flattens them)."""

    body: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.contiguous(memory_format=torch.channels_last))


class SmallBackbone(ConvBackbone):
    """A few conv stages for CPU runs and tests; dilation keeps the receptive field when stride stops."""

    def __init__(self, output_stride: int, weights: str = ""):
        super().__init__()
        if weights:
            raise ValueError("the small backbone has no pretrained weights; leave backbone_weights empty")
        widths, layers, stride, cin = (32, 64, 128, 128), [], 1, 3
        for w in widths:
            step = 2 if stride < output_stride else 1
            stride *= step
            dilation = 1 if step == 2 else 2
            layers += [_conv_bn_relu(cin, w, step), _conv_bn_relu(w, w, dilation=dilation)]
            cin = w
        self.body = nn.Sequential(*layers)
        self.out_channels = cin


class ResNetBackbone(ConvBackbone):
    """A torchvision ResNet as a dilated FCN (HSG): the last stages trade stride for dilation."""

    def __init__(self, builder: Callable[..., nn.Module], output_stride: int, weights: str = ""):
        super().__init__()
        dilate = [False, output_stride == 8, True]
        net = builder(weights=None, replace_stride_with_dilation=dilate)
        if weights:
            missing, _ = net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=False)
            if missing:
                raise ValueError(f"{weights} is not a torchvision ResNet state_dict: it lacks {missing[0]}")
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                                  net.layer4)
        self.out_channels = net.fc.in_features


class TimmViTBackbone(nn.Module):
    """A timm ViT whose patch tokens, laid back on their grid, are the dense feature map (stride = patch)."""

    def __init__(self, name: str, weights: str = ""):
        super().__init__()
        import timm

        self.vit = timm.create_model(name, pretrained=bool(weights), num_classes=0, dynamic_img_size=True,
                                     pretrained_cfg_overlay={"file": weights} if weights else None)
        self.patch = self.vit.patch_embed.patch_size[0]
        self.out_channels = self.vit.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]  # [B, h*w, C]
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class BackboneSpec(NamedTuple):
    build: Callable[[int, str], nn.Module]  # (output_stride, weights file) -> module with .out_channels
    strides: tuple[int, ...]


def _resnet(name: str) -> Callable[[int, str], nn.Module]:
    def build(stride: int, weights: str) -> nn.Module:
        # here, not with the module: the trainer's config names the backbones before a user's mistake is
        # reported, and torchvision brings torch._dynamo (2-3 s)
        import torchvision

        return ResNetBackbone(getattr(torchvision.models, name), stride, weights)

    return build


BACKBONES: dict[str, BackboneSpec] = {
    "small": BackboneSpec(SmallBackbone, (4, 8)),
    "resnet50": BackboneSpec(_resnet("resnet50"), (8, 16)),
    "resnet101": BackboneSpec(_resnet("resnet101"), (8, 16)),
    "vit_small_patch16": BackboneSpec(lambda stride, weights: TimmViTBackbone("vit_small_patch16_224", weights), (16,)),
    "vit_base_patch16": BackboneSpec(lambda stride, weights: TimmViTBackbone("vit_base_patch16_224", weights), (16,)),
}


class SegNet(nn.Module):
    """Images in [0, 1] -> unit pixel embeddings and their CLIP-space projection, at 1/output_stride."""

    def __init__(self, cfg: NetworkConfig):
        super().__init__()
        if cfg.clip_dim < 1:
            raise ValueError("network.clip_dim is 0: set it to the teacher's embedding width")
        self.cfg = cfg
        self.backbone = BACKBONES[cfg.backbone].build(cfg.output_stride, cfg.backbone_weights)
        c = self.backbone.out_channels
        # HSG's head: conv, BN, ReLU, conv to the embedding dimension
        self.embed = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                   nn.Conv2d(c, cfg.embedding_dim, 1))
        self.project = nn.Sequential(nn.Conv2d(cfg.embedding_dim, cfg.projection_hidden, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(cfg.projection_hidden, cfg.clip_dim, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def output_stride(self) -> int:
        return self.cfg.output_stride

    def forward(self, images: torch.Tensor) -> ModelOutput:
        """images: [B, 3, H, W] in [0, 1], H and W multiples of the output stride."""
        features = self.backbone((images - self.mean) / self.std)
        embeddings = F.normalize(self.embed(features), dim=1)
        return ModelOutput(embeddings, self.project(embeddings))


def build_network(cfg: NetworkConfig) -> SegNet:
    return SegNet(cfg)
