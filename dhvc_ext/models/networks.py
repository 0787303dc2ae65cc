"""Encoder and decoder bodies of the DHVC network: plain PyTorch, no dhvc_ext ops.

- ``MLP``: Linear + ReLU layers, the DEC/VaDE body d-500-500-2000 by default.
- ``ConvEncoder`` / ``ConvDecoder``: a small convolutional pair for images of shape (C, H, W): two stride-2
  convolutions (32, 64 channels) and a dense layer, mirrored by transposed convolutions. H and W need not be
  multiples of 4: the decoder crops its output to (H, W).

Shapes: every body maps (B, n_in) -> (B, n_out); images travel flattened, as (B, C * H * W), so that the
trainer and the data loaders see one layout whatever the architecture.
"""
import torch
from torch import nn

__all__ = ["ConvDecoder", "ConvEncoder", "MLP"]


class MLP(nn.Sequential):
    """(B, n_in) -> (B, sizes[-1]): Linear layers of the given sizes with ReLU between them (and after the
    last one when ``final_activation``)."""

    def __init__(self, n_in, sizes, final_activation=True):
        layers, prev = [], n_in
        for i, size in enumerate(sizes):
            layers.append(nn.Linear(prev, size))
            if i < len(sizes) - 1 or final_activation:
                layers.append(nn.ReLU())
            prev = size
        super().__init__(*layers)
        self.n_out = prev


def _conv_out(n):
    """Spatial size after a 3x3 convolution with stride 2 and padding 1."""
    return (n - 1) // 2 + 1


class ConvEncoder(nn.Module):
    """(B, C*H*W) -> (B, n_out): conv(32, s2) - conv(64, s2) - dense(n_out), ReLU throughout."""

    def __init__(self, image_shape, n_out=256):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = tuple(image_shape)
        self.convs = nn.Sequential(nn.Conv2d(c, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU())
        self.flat = 64 * _conv_out(_conv_out(h)) * _conv_out(_conv_out(w))
        self.dense = nn.Sequential(nn.Linear(self.flat, n_out), nn.ReLU())
        self.n_out = n_out

    def forward(self, x):
        return self.dense(self.convs(x.view(-1, *self.image_shape)).flatten(1))


class ConvDecoder(nn.Module):
    """(B, n_in) -> (B, C*H*W): the mirror of ``ConvEncoder`` (no activation on the output)."""

    def __init__(self, n_in, image_shape):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = tuple(image_shape)
        self.h4, self.w4 = _conv_out(_conv_out(h)), _conv_out(_conv_out(w))
        self.dense = nn.Sequential(nn.Linear(n_in, 256), nn.ReLU(), nn.Linear(256, 64 * self.h4 * self.w4), nn.ReLU())
        self.deconvs = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, c, 3, 2, 1, output_padding=1),
        )

    def forward(self, z):
        c, h, w = self.image_shape
        out = self.deconvs(self.dense(z).view(-1, 64, self.h4, self.w4))
        return out[:, :, :h, :w].reshape(out.shape[0], c * h * w)

