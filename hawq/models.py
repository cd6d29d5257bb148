"""The embedded models for 1x28x28 input and their checkpoints: the default CIFAR-style ResNet-20,
a MobileNetV2-style network (depthwise convolutions) and a small vision transformer for the
quality benchmark."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import nn

from .errors import ArtifactError

DEFAULT_CHECKPOINT = "resnet20_fashion.pt"
CHECKPOINTS = {"resnet20": DEFAULT_CHECKPOINT, "mobilenetv2_fashion": "mobilenetv2_fashion.pt",
               "vit_fashion": "vit_fashion.pt"}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """3 stages x 3 basic blocks, 16/32/64 channels, global average pooling, one linear layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        cin = 16
        for i, cout in enumerate((16, 32, 64)):
            stage = [BasicBlock(cin, cout, 1 if i == 0 else 2)] + [BasicBlock(cout, cout, 1) for _ in range(2)]
            blocks.append(nn.Sequential(*stage))
            cin = cout
        self.layer1, self.layer2, self.layer3 = blocks
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet20(in_channels: int = 1, num_classes: int = 10) -> ResNet20:
    return ResNet20(in_channels, num_classes)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection; identity skip when the
    shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.skip else y


class MobileNetV2Fashion(nn.Module):
    """MobileNetV2 reduced for 28x28: stride-1 stem, stages (expansion, channels, blocks, stride)
    (1,16,1,1) (4,24,2,2) (4,32,3,2) (4,64,3,1) (4,96,2,1), a 1x1 conv to 320, pooling, one linear."""

    STAGES = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 3, 2), (4, 64, 3, 1), (4, 96, 2, 1))

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())]
        cin = 16
        for t, c, n, s in self.STAGES:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(nn.Sequential(nn.Conv2d(cin, 320, 1, bias=False), nn.BatchNorm2d(320), nn.ReLU6()))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(320, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenetv2_fashion(in_channels: int = 1, num_classes: int = 10) -> MobileNetV2Fashion:
    return MobileNetV2Fashion(in_channels, num_classes)


class Attention(nn.Module):
    """Multi-head self-attention with its projections as plain Linear layers (so each is a
    quantizable layer), written out in matmuls and a softmax: every op has second derivatives."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(n, t, c))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ViTFashion(nn.Module):
    """A small vision transformer for 28x28: 4x4 patches (a strided conv) to 49 tokens of width 64
    with learned positions, 4 pre-norm blocks (4 heads, MLP 128), mean pooling, one linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp: int = 128, patch: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, (28 // patch) ** 2, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


def vit_fashion(in_channels: int = 1, num_classes: int = 10) -> ViTFashion:
    return ViTFashion(in_channels, num_classes)


BUILDERS = {"resnet20": resnet20, "mobilenetv2_fashion": mobilenetv2_fashion, "vit_fashion": vit_fashion}


def checkpoint_path(name: str) -> Path:
    """The embedded checkpoint of a model in BUILDERS."""
    return Path(str(resources.files("hawq") / "assets" / CHECKPOINTS[name]))


def default_checkpoint_path() -> Path:
    return checkpoint_path("resnet20")


def load_embedded(name: str) -> nn.Module:
    """An embedded model with its trained checkpoint (FP32, eval mode)."""
    if name not in BUILDERS:
        raise ArtifactError(f"no embedded model {name!r}; choose one of {', '.join(BUILDERS)}")
    return load_checkpoint(BUILDERS[name](), checkpoint_path(name))


def load_default_model() -> ResNet20:
    """The embedded ResNet-20 trained on Fashion-MNIST (FP32, eval mode)."""
    return load_checkpoint(resnet20(), default_checkpoint_path())


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} not found; give the path of a saved state_dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or not a torch file
        raise ArtifactError(f"cannot read checkpoint {path} ({e.__class__.__name__}); is it a torch.save'd state_dict?") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ArtifactError(f"checkpoint {path} does not fit the model: {first}") from e
    return model.eval()
