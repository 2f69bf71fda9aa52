"""SeMask-S FPN for Cityscapes (Picsart-AI-Research/SeMask-Segmentation @ f12cf00, SeMask-FPN,
config semfpn_semask_swin_small_patch4_window7_768x768_80k_cityscapes).

Module names follow the official checkpoint (``backbone.*``, ``decode_head.*``):

* ``backbone``: Swin-S (embed 96, depths 2-2-18-2, heads 3-6-12-24, window 7) where each
  stage ends with a windowed SeMask semantic layer; stage outputs are ``norm{i}`` of the
  semantic layer's output (before patch merging) and the raw class scores Q of its windows.
  Windows are padded bottom/right with zeros *after* the LayerNorm, padded tokens are not
  masked, odd blocks roll by 3 on the padded map, and the shift mask (-100 between regions)
  is built on the padded size.
* ``decode_head``: the Semantic-FPN head on the four stages directly (no neck): per stage
  3x3 conv (no bias) + BN + ReLU, with x2 bilinear upsampling to stride 4, summed, then a
  1x1 classifier. The semantic ("light") decoder branch only serves training and is left out.

The segmentor upsamples the stride-4 logits to the input (bilinear, align_corners False) and
takes the arg-max over the 19 classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 19
EMBED_DIM, DEPTHS, HEADS = 96, (2, 2, 18, 2), (3, 6, 12, 24)
WINDOW, SHIFT = 7, 3
HEAD_CHANNELS = 256


def _pad_to_window(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """[B, H, W, C] -> zero-padded bottom/right to multiples of the window, and Hp, Wp."""
    _, h, w, _ = x.shape
    pad_b, pad_r = (WINDOW - h % WINDOW) % WINDOW, (WINDOW - w % WINDOW) % WINDOW
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x, h + pad_b, w + pad_r


def window_partition(x: torch.Tensor) -> torch.Tensor:
    """[B, Hp, Wp, C] -> [B * windows, 49, C]; windows batch-major, then row, then column."""
    b, h, w, c = x.shape
    x = x.view(b, h // WINDOW, WINDOW, w // WINDOW, WINDOW, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, WINDOW * WINDOW, c)


def window_reverse(windows: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """[B * windows, 49, C] -> [B, Hp, Wp, C]."""
    c = windows.shape[-1]
    x = windows.view(b, h // WINDOW, w // WINDOW, WINDOW, WINDOW, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shift_mask(hp: int, wp: int) -> torch.Tensor:
    """The shifted-window attention mask [windows, 49, 49]: -100 between tokens of different
    regions (three bands per axis on the padded map), 0 elsewhere. Built with numpy, so an
    exported graph holds it as a constant."""
    import numpy as np

    bands = lambda size: np.digitize(np.arange(size), [size - WINDOW, size - SHIFT])  # noqa: E731
    labels = (bands(hp)[:, None] * 3 + bands(wp)[None, :]).astype(np.float32)
    windows = labels.reshape(hp // WINDOW, WINDOW, wp // WINDOW, WINDOW).transpose(0, 2, 1, 3).reshape(-1, WINDOW ** 2)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.from_numpy(np.where(diff != 0, -100.0, 0.0).astype(np.float32))


def relative_position_index() -> torch.Tensor:
    """[49, 49]: (h_a - h_b + 6) * 13 + (w_a - w_b + 6) for tokens a, b of a window in raster order."""
    coords = torch.stack(torch.meshgrid(torch.arange(WINDOW), torch.arange(WINDOW), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (WINDOW - 1)
    return rel[:, :, 0] * (2 * WINDOW - 1) + rel[:, :, 1]


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * WINDOW - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index())
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n_windows, tokens, c = x.shape
        qkv = self.qkv(x).reshape(n_windows, tokens, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            per_image = mask.shape[0]
            attn = attn.view(-1, per_image, self.heads, tokens, tokens) + mask[None, :, None]
            attn = attn.view(-1, self.heads, tokens, tokens)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(n_windows, tokens, c)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, shifted: bool) -> None:
        super().__init__()
        self.shifted = shifted
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads)
        self.mlp = Mlp(dim)

    def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        y, hp, wp = _pad_to_window(self.norm1(x).view(b, h, w, c))
        if self.shifted:
            y = torch.roll(y, shifts=(-SHIFT, -SHIFT), dims=(1, 2))
        y = window_reverse(self.attn(window_partition(y), mask if self.shifted else None), b, hp, wp)
        if self.shifted:
            y = torch.roll(y, shifts=(SHIFT, SHIFT), dims=(1, 2))
        x = x + y[:, :h, :w, :].reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class ClassInjection(nn.Module):
    """SeMask's semantic attention on one window's normalised tokens T: Q = T Wq (the class
    scores), K = T Wk, V = T Wv; out = gamma * (softmax(Q K^T) V) Wres + T (single head, no scale)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.mlp_cls_q, self.mlp_cls_k = nn.Linear(dim, NUM_CLASSES), nn.Linear(dim, NUM_CLASSES)
        self.mlp_v, self.mlp_res = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.mlp_cls_q(t)
        attn = (q @ self.mlp_cls_k(t).transpose(-2, -1)).softmax(dim=-1)
        return self.gamma * self.mlp_res(attn @ self.mlp_v(t)) + t, q


class SemanticLayer(nn.Module):
    """The windowed SeMask block (window 7, no shift); its output replaces the stage's tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.class_injection = nn.ModuleList([ClassInjection(dim)])

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, c = x.shape
        t, hp, wp = _pad_to_window(self.norm1(x).view(b, h, w, c))
        out, q = self.class_injection[0](window_partition(t))
        out = window_reverse(out, b, hp, wp)[:, :h, :w, :].reshape(b, h * w, c)
        sem = window_reverse(q, b, hp, wp)[:, :h, :w, :].permute(0, 3, 1, 2)
        return out, sem


class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class Stage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, merge: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([SwinBlock(dim, heads, shifted=i % 2 == 1) for i in range(depth)])
        self.semantic_layer = SemanticLayer(dim)
        self.downsample = PatchMerging(dim) if merge else None

    def forward(self, x: torch.Tensor, h: int, w: int):
        hp, wp = -(-h // WINDOW) * WINDOW, -(-w // WINDOW) * WINDOW
        mask = shift_mask(hp, wp).to(x.dtype)
        for block in self.blocks:
            x = block(x, h, w, mask)
        x, sem = self.semantic_layer(x, h, w)
        merged = self.downsample(x, h, w) if self.downsample is not None else None
        return x, sem, merged


class PatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, EMBED_DIM, 4, stride=4)
        self.norm = nn.LayerNorm(EMBED_DIM)


class SeMaskSwin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed()
        self.layers = nn.ModuleList([Stage(EMBED_DIM * 2 ** i, DEPTHS[i], HEADS[i], merge=i < 3) for i in range(4)])
        for i in range(4):
            setattr(self, f"norm{i}", nn.LayerNorm(EMBED_DIM * 2 ** i))

    def forward(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``image [B, 3, H, W]`` (H, W multiples of 32) -> (4 features, 4 semantic maps)."""
        x = self.patch_embed.proj(image)
        b, _, h, w = x.shape
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        features, semantic = [], []
        for i, stage in enumerate(self.layers):
            out, sem, x = stage(x, h, w)
            c = out.shape[-1]
            features.append(getattr(self, f"norm{i}")(out).view(b, h, w, c).permute(0, 3, 1, 2).contiguous())
            semantic.append(sem)
            h, w = (h + 1) // 2, (w + 1) // 2
        return features, semantic


class ConvModule(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Upsample2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class FPNHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        heads = []
        for i, cin in enumerate(EMBED_DIM * 2 ** k for k in range(4)):
            layers: list[nn.Module] = []
            for k in range(max(1, i)):
                layers.append(ConvModule(cin if k == 0 else HEAD_CHANNELS, HEAD_CHANNELS))
                if i > 0:
                    layers.append(Upsample2x())
            heads.append(nn.Sequential(*layers))
        self.scale_heads = nn.ModuleList(heads)
        self.conv_seg = nn.Conv2d(HEAD_CHANNELS, NUM_CLASSES, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](features[0])
        for i in range(1, 4):
            branch = self.scale_heads[i](features[i])
            if branch.shape[-2:] != out.shape[-2:]:
                branch = F.interpolate(branch, size=out.shape[-2:], mode="bilinear", align_corners=False)
            out = out + branch
        return self.conv_seg(out)


class SeMaskFPN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = SeMaskSwin()
        self.decode_head = FPNHead()

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Stride-4 logits [B, 19, H/4, W/4]."""
        features, _ = self.backbone(image)
        return self.decode_head(features)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The port's graph: normalised RGB [B, 3, H, W] -> class map int64 [B, H, W]."""
        logits = F.interpolate(self.logits(image), size=image.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(dim=1)
