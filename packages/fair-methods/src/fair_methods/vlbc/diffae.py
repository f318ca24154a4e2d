"""Diffusion autoencoders (DiffAE): the image generator of the VLBC method (WACV 2024).

Preechakul, Chatthee, Wizadwongsa and Suwajanakorn, "Diffusion Autoencoders: Toward a Meaningful
and Decodable Representation", CVPR 2022; official code github.com/phizaz/diffae (read at commit
00c57d3). An image ``x0`` is described by two codes:

* ``z_sem = Enc(x0)``, the *semantic* code (paper, "Semantic encoder"): a half-UNet whose pooled
  last feature map is projected to ``style_channels`` (512) numbers;
* ``x_T``, the *stochastic* code (paper, "Stochastic encoder"): the end of the deterministic DDIM
  path (eta = 0) run forwards from ``x0`` with the decoder conditioned on ``z_sem``.

The decoder (paper, "Diffusion-based decoder") is a conditional DDIM whose noise predictor
``eps_theta(x_t, t, z_sem)`` is a UNet; every residual block is conditioned by adaptive group
normalisation on the time embedding and on ``z_sem``::

    AdaGN(h, t, z_sem) = (1 + z_s) * ((1 + t_s) * GroupNorm(h) + t_b)
    (t_s, t_b) = Linear(SiLU(MLP(psi(t))))       z_s = Linear(SiLU(z_sem))

(the paper writes ``z_s (t_s GroupNorm(h) + t_b)``; the official code adds the ones, so that zero
projections leave the features unchanged). Unconditional generation (paper, "Sampling with
diffusion autoencoders") draws ``z_sem`` from a second DDIM over the normalised semantic code
(``(z_sem - conds_mean) / conds_std``, statistics of the FFHQ training set), whose noise predictor
is an MLP with the input concatenated to every hidden layer (``MLPSkipNet``), then decodes it from a
Gaussian ``x_T``.

What follows the official code (``model/`` and ``diffusion/`` at that commit):

* :class:`DiffAEConfig`: the numbers of ``templates.py: ffhq256_autoenc`` (lines 141-153, on top of
  ``autoenc_base`` 31-58 and ``ffhq128_autoenc_base`` 125-138) and ``templates_latent.py:
  ffhq256_autoenc_latent`` (96-109, with ``latent_diffusion_config`` 4-20 and
  ``latent_mlp_2048_norm_10layers`` 29-37), read through ``config.py: make_model_conf`` (333-425)
  and the defaults of ``config.py: TrainConfig``;
* :class:`ResBlock`: ``model/blocks.py: ResBlock`` (80-257) and ``apply_conditions`` (260-335);
  an unconditioned block (the encoder's) is only norm-SiLU-conv plus the skip, as there;
* :class:`AttentionBlock`: ``model/blocks.py: AttentionBlock`` + ``QKVAttentionLegacy`` (404-502);
* :class:`SemanticEncoder`: ``model/unet.py: BeatGANsEncoderModel`` (377-533), pool
  ``adaptivenonzero``, no time condition (``model/unet_autoenc.py`` 36-55);
* :class:`ConditionalUNet`: ``model/unet.py: BeatGANsUNetModel.__init__`` (77-293) with
  ``model/unet_autoenc.py: BeatGANsAutoencModel`` (27-248) and ``TimeStyleSeperateEmbed`` (265-283);
* :class:`MLPSkipNet`: ``model/latentnet.py`` (28-192);
* :func:`timestep_embedding`, the group norm in float32, zero-initialised output convolutions:
  ``model/nn.py`` (23-25, 74-80, 99-128);
* the beta schedules: ``diffusion/base.py: get_named_beta_schedule`` (950-1011); the DDIM steps:
  ``diffusion/base.py: ddim_sample`` (584-631), ``ddim_reverse_sample`` (633-668) and their loops
  (670-807), the respacing ``diffusion/diffusion.py: space_timesteps`` (5-58) and
  ``SpacedDiffusionBeatGans`` / ``_WrappedModel`` (68-158) (the network sees the original
  timestep, not the index of the respaced step);
* the pipelines: ``experiment.py: LitModel.sample / render / encode / encode_stochastic`` (95-155)
  and ``renderer.py: render_uncondition / render_condition``.

The official checkpoints hold these modules' weights under the names given in
:func:`convert_official_checkpoint`; this module keeps the official sub-module names where the
weights live (``input_blocks.3.0.in_layers.2.weight``, ...) so that the mapping is a few prefixes.

Nothing here reads a pickle except :func:`convert_official_checkpoint` (``torch.load`` with
``weights_only=True``); a converted model is saved and loaded as ``model.safetensors`` +
``config.json`` (:func:`save_safetensors`, :func:`load_diffae`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fair_core.atomic import atomic_path

__all__ = [
    "DiffAE",
    "DiffAEConfig",
    "convert_official_checkpoint",
    "ddim_timesteps",
    "load_diffae",
    "named_beta_schedule",
    "save_safetensors",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# Defaults of the public methods, from the official notebooks and templates: autoencoding.ipynb
# encodes x_T with T=250 and renders with T=20; templates.py / templates_latent.py evaluate with
# T_eval = latent_T_eval = 20.
ENCODE_STEPS = 250
DECODE_STEPS = 20
LATENT_STEPS = 20


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


class DiffAEConfig(BaseModel):
    """The architecture and the diffusion processes of a DiffAE, defaults = the official FFHQ-256
    model with its latent DDIM (``templates.ffhq256_autoenc`` + ``templates_latent.
    ffhq256_autoenc_latent``); the official option each field stands for is in its comment.

    A small model for tests is the same with smaller numbers, e.g. ``image_size=16,
    model_channels=16, channel_mult=(1, 1), enc_channel_mult=(1, 2), attention_resolutions=(8,),
    enc_attn_resolutions=(8,), num_res_blocks=1, enc_num_res_blocks=1, style_channels=32,
    embed_channels=32, latent_num_layers=3, latent_hid_channels=64, latent_skip_layers=(1, 2)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    # --- the conditional UNet eps_theta(x_t, t, z_sem) (BeatGANsAutoencConfig) ---
    image_size: int = 256  # img_size
    model_channels: int = 128  # net_ch: channels of the first level
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)  # net_ch_mult: 256 -> 8 px
    num_res_blocks: int = 2  # net_num_res_blocks (the decoder has one more per level)
    attention_resolutions: tuple[int, ...] = (16,)  # net_attn: self-attention at these sizes
    num_heads: int = 1  # net_beatgans_attn_head
    embed_channels: int = 512  # net_beatgans_embed_channels: the time embedding's width
    dropout: float = 0.1  # dropout (in the UNet's residual blocks; off at inference)
    # --- the semantic encoder z_sem = Enc(x0) (BeatGANsEncoderConfig) ---
    enc_channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4, 4)  # net_enc_channel_mult: 256 -> 4 px
    enc_num_res_blocks: int = 2  # net_enc_num_res_blocks
    enc_attn_resolutions: tuple[int, ...] = (16,)  # net_enc_attn (None there: = net_attn)
    style_channels: int = 512  # style_ch = enc_out_channels: the dimension of z_sem
    # --- the image diffusion ---
    num_timesteps: int = 1000  # T
    beta_schedule: str = "linear"  # beta_scheduler: 1e-4 .. 0.02 over T steps
    # --- the latent DDIM over z_sem (MLPSkipNetConfig, latent_mlp_2048_norm_10layers) ---
    latent_num_layers: int = 10  # net_latent_layers
    latent_hid_channels: int = 2048  # net_latent_num_hid_channels
    latent_skip_layers: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9)  # net_latent_skip_layers
    latent_activation: Literal["silu", "relu", "lrelu", "tanh", "none"] = "silu"  # net_latent_activation
    latent_use_norm: bool = True  # net_latent_use_norm: LayerNorm in the hidden layers
    latent_condition_bias: float = 1.0  # net_latent_condition_bias: h * (bias + time scale)
    latent_time_emb_channels: int = 64  # net_latent_time_emb_channels
    latent_num_time_layers: int = 2  # net_latent_num_time_layers
    latent_dropout: float = 0.0  # net_latent_dropout
    latent_beta_schedule: str = "const0.008"  # latent_beta_scheduler (over the same T)
    latent_znormalize: bool = True  # latent_znormalize: the latent DDIM models normalised z_sem

    @model_validator(mode="after")
    def _consistent(self) -> DiffAEConfig:
        positive = {
            "image_size": self.image_size, "model_channels": self.model_channels,
            "num_res_blocks": self.num_res_blocks, "num_heads": self.num_heads,
            "embed_channels": self.embed_channels, "enc_num_res_blocks": self.enc_num_res_blocks,
            "style_channels": self.style_channels, "num_timesteps": self.num_timesteps,
            "latent_hid_channels": self.latent_hid_channels,
            "latent_time_emb_channels": self.latent_time_emb_channels,
            "latent_num_time_layers": self.latent_num_time_layers,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        for name, mults in (("channel_mult", self.channel_mult), ("enc_channel_mult", self.enc_channel_mult)):
            if not mults or min(mults) < 1:
                raise ValueError(f"{name} must be a non-empty tuple of positive multipliers, got {mults}")
            if self.image_size % 2 ** (len(mults) - 1):
                raise ValueError(f"image_size {self.image_size} cannot be halved {len(mults) - 1} times "
                                 f"({name} has {len(mults)} levels)")
        if self.latent_num_layers < 2:
            raise ValueError(f"latent_num_layers must be at least 2 (first and last layer), got {self.latent_num_layers}")
        wrong = [i for i in self.latent_skip_layers if not 0 <= i < self.latent_num_layers]
        if wrong:
            raise ValueError(f"latent_skip_layers {wrong} are not layers of a {self.latent_num_layers}-layer MLP")
        for name, p in (("dropout", self.dropout), ("latent_dropout", self.latent_dropout)):
            if not 0 <= p < 1:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        for schedule in (self.beta_schedule, self.latent_beta_schedule):
            named_beta_schedule(schedule, self.num_timesteps)  # a ValueError for an unknown or invalid one
        return self


# --------------------------------------------------------------------------------------------
# Diffusion schedules and the DDIM update
# --------------------------------------------------------------------------------------------


def named_beta_schedule(name: str, num_timesteps: int) -> Tensor:
    """The official named beta schedules (float64, ``diffusion/base.py: get_named_beta_schedule``),
    scaled by ``1000 / num_timesteps`` so that they keep their shape for any T:

    * ``"linear"``: Ho et al.'s ``linspace(1e-4, 0.02, T)`` (the image diffusion);
    * ``"const<beta>"``, e.g. ``"const0.008"``: every beta equal (the latent diffusion).
    """
    scale = 1000 / num_timesteps
    found = re.fullmatch(r"const(\d*\.?\d+)", name)
    if name == "linear":
        betas = torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    elif found:
        betas = torch.full((num_timesteps,), scale * float(found.group(1)), dtype=torch.float64)
    else:
        raise ValueError(f"unknown beta schedule {name!r}: expected 'linear' or 'const<beta>' (e.g. 'const0.008')")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(f"beta schedule {name!r} over {num_timesteps} steps has betas outside (0, 1) "
                         f"(they are scaled by 1000 / T = {scale:g})")
    return betas


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The original timesteps a ``steps``-step DDIM visits, increasing.

    The official DDIM samplers are built with ``space_timesteps(T, "ddim<steps>")``
    (``config.py: _make_diffusion_conf``): the smallest integer stride ``s`` (1 <= s < T) for which
    ``range(0, T, s)`` has exactly ``steps`` elements, and those elements: evenly spaced, starting
    at 0 (``T=1000``: 20 steps -> 0, 50, ..., 950; 250 steps -> 0, 4, ..., 996). As there, a count
    that no integer stride gives (e.g. 1, or 600 of 1000) is a ``ValueError``.
    """
    if steps == num_timesteps:
        return list(range(num_timesteps))
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == steps:
            return list(range(0, num_timesteps, stride))
    raise ValueError(f"no integer stride gives exactly {steps} DDIM steps out of {num_timesteps} "
                     f"(the official space_timesteps('ddim{steps}') rule); try a divisor of {num_timesteps}")


def ddim_move(x: Tensor, eps: Tensor, alpha_bar: float, alpha_bar_to: float, clip: bool) -> Tensor:
    """One deterministic DDIM step (eta = 0; Song et al. eq. 12, paper "Diffusion-based decoder"):
    the sample ``x`` at cumulative signal ``alpha_bar`` moved to ``alpha_bar_to`` along the
    predicted ``x0``. Towards the data (``alpha_bar_to > alpha_bar``) it is the decoder's step; away
    from it, the stochastic encoder's inversion step (official ``ddim_reverse_sample``).

    ``x0 = (x - sqrt(1 - a) eps) / sqrt(a)``, clipped to [-1, 1] when ``clip`` (the image diffusion,
    whose samplers run with ``clip_denoised=True``; the latent one does not clip), and then the
    noise re-derived from the clipped ``x0``, as the official ``ddim_sample`` does;
    ``x' = sqrt(a') x0 + sqrt(1 - a') eps``.
    """
    recip, recipm1 = math.sqrt(1.0 / alpha_bar), math.sqrt(1.0 / alpha_bar - 1.0)
    x0 = x * recip - eps * recipm1
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x * recip - x0) / recipm1
    return x0 * math.sqrt(alpha_bar_to) + eps * math.sqrt(1.0 - alpha_bar_to)


def ddim_path(eps_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, alphas_cumprod: list[float],
              timesteps: list[int], *, invert: bool, clip: bool) -> Tensor:
    """Run the deterministic DDIM over ``timesteps`` (increasing original timesteps).

    * ``invert=False`` (sampling, official ``ddim_sample_loop``): from ``x`` = x_T at the last
      timestep down to the data, the last step landing on ``alpha_bar = 1`` (so the output is the
      predicted ``x0``);
    * ``invert=True`` (official ``ddim_reverse_sample_loop``): from ``x`` = x0 taken as the sample
      at the first timestep (0) up to the last, whose step lands on ``alpha_bar = 0``, so ``x_T`` is
      the noise predicted there.

    ``eps_fn(x, t)`` receives the original timesteps (``t`` a long tensor of the batch size).
    """
    n = len(timesteps)
    order = range(n) if invert else range(n - 1, -1, -1)
    for k in order:
        if invert:
            target = alphas_cumprod[timesteps[k + 1]] if k + 1 < n else 0.0
        else:
            target = alphas_cumprod[timesteps[k - 1]] if k > 0 else 1.0
        t = torch.full((x.shape[0],), timesteps[k], dtype=torch.long, device=x.device)
        x = ddim_move(x, eps_fn(x, t), alphas_cumprod[timesteps[k]], target, clip)
    return x


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding psi(t) of (possibly fractional) timesteps: ``[cos(t w), sin(t w)]``
    with ``w_i = max_period^(-i / (dim // 2))`` (official ``model/nn.py: timestep_embedding``:
    cosines first), zero-padded to an odd ``dim``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class GroupNorm32(nn.GroupNorm):
    """Group normalisation computed in float32 with ``min(32, channels)`` groups (official
    ``normalization`` / ``GroupNorm32``)."""

    def __init__(self, channels: int):
        groups = min(32, channels)
        if channels % groups:
            raise ValueError(f"a DiffAE group norm over {channels} channels needs them divisible by {groups} "
                             f"(32 groups, or one per channel below 32): choose model_channels / channel_mult "
                             f"so that every level's channels, and the decoder's concatenations with the "
                             f"skip connections, are multiples of 32 (or all equal and below 32)")
        super().__init__(groups, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` (the last convolutions of the UNet's blocks start at 0, as
    in the official code, so that every block starts as the identity)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class ResBlock(nn.Module):
    """A residual block, optionally resampling (``"up"``: nearest x2, ``"down"``: average pool /2,
    applied to both paths between the first norm-SiLU and its convolution, official
    ``resblock_updown``).

    Conditioned (``emb_channels`` given; the UNet's blocks)::

        h = Conv(SiLU(GroupNorm(x)))
        h = Conv(Dropout(SiLU(AdaGN(h, t, z_sem))))      # AdaGN: see the module docstring
        out = skip(x) + h

    with ``emb_layers`` the time projection to ``(t_s, t_b)`` and ``cond_emb_layers`` the z_sem
    projection to ``z_s``. Unconditioned (the semantic encoder's blocks) the second half is absent,
    exactly as in the official code (``use_condition=False`` builds no ``out_layers``):
    ``out = skip(x) + Conv(SiLU(GroupNorm(x)))``. ``skip`` is a 1x1 convolution when the channels
    change. The sub-module names are the official ones (``in_layers.{0,2}``, ``emb_layers.1``,
    ``cond_emb_layers.1``, ``out_layers.{0,3}``, ``skip_connection``).
    """

    def __init__(self, channels: int, out_channels: int, *, emb_channels: int | None = None,
                 cond_channels: int | None = None, dropout: float = 0.0,
                 resample: Literal["up", "down"] | None = None):
        super().__init__()
        self.resample = resample
        self.conditioned = emb_channels is not None
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        if self.conditioned:
            if cond_channels is None:
                raise ValueError("a conditioned ResBlock needs cond_channels (the z_sem dimension)")
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
            self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cond_channels, out_channels))
            self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, x: Tensor, emb: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        norm, act, conv = self.in_layers
        h = conv(self._resample(act(norm(x))))
        x = self._resample(x)
        if self.conditioned:
            if emb is None or cond is None:
                raise ValueError("a conditioned ResBlock needs both the time embedding and z_sem")
            t_scale, t_shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
            z_scale = self.cond_emb_layers(cond)[:, :, None, None]
            norm, act, dropout, conv = self.out_layers
            h = (norm(h) * (1 + t_scale) + t_shift) * (1 + z_scale)  # AdaGN
            h = conv(dropout(act(h)))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the positions of a feature map, residual, its output projection starting
    at zero (official ``AttentionBlock`` with the legacy head layout: the 1x1 ``qkv`` convolution's
    channels are ``[q, k, v]`` within each head)."""

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} attention heads")
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        head = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * head, -1).split(head, dim=1)
        scale = head ** -0.25  # on q and k both: 1 / sqrt(head) on their product
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1).type(q.dtype)
        out = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
        return (x + self.proj_out(out)).reshape(b, c, *spatial)


class CondSequential(nn.Sequential):
    """A sequence of layers of which the residual blocks also receive the time embedding and z_sem
    (official ``TimestepEmbedSequential``)."""

    def forward(self, x: Tensor, emb: Tensor | None = None, cond: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb, cond) if isinstance(layer, ResBlock) else layer(x)
        return x


# --------------------------------------------------------------------------------------------
# The three networks
# --------------------------------------------------------------------------------------------


class SemanticEncoder(nn.Module):
    """``z_sem = Enc(x0)`` (paper, "Semantic encoder"): the encoding half of a UNet (no time input)
    over ``enc_channel_mult``, downsampling by residual blocks, self-attention at
    ``enc_attn_resolutions`` and in the middle, then GroupNorm-SiLU, global average pooling and a
    1x1 convolution to ``style_channels`` (official ``BeatGANsEncoderModel``, pool
    ``adaptivenonzero``). Input in [-1, 1]."""

    def __init__(self, config: DiffAEConfig):
        super().__init__()
        mc = config.model_channels
        ch = config.enc_channel_mult[0] * mc
        blocks: list[nn.Module] = [CondSequential(nn.Conv2d(3, ch, 3, padding=1))]
        resolution = config.image_size
        last = len(config.enc_channel_mult) - 1
        for level, mult in enumerate(config.enc_channel_mult):
            for _ in range(config.enc_num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * mc)]
                ch = mult * mc
                if resolution in config.enc_attn_resolutions:
                    layers.append(AttentionBlock(ch, config.num_heads))
                blocks.append(CondSequential(*layers))
            if level != last:
                blocks.append(CondSequential(ResBlock(ch, ch, resample="down")))
                resolution //= 2
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = CondSequential(ResBlock(ch, ch), AttentionBlock(ch, config.num_heads), ResBlock(ch, ch))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                 nn.Conv2d(ch, config.style_channels, 1), nn.Flatten())

    def forward(self, x: Tensor) -> Tensor:
        for block in self.input_blocks:
            x = block(x)
        return self.out(self.middle_block(x))


class ConditionalUNet(nn.Module):
    """``eps_theta(x_t, t, z_sem)`` (paper, "Diffusion-based decoder"): a UNet over
    ``channel_mult`` with ``num_res_blocks`` residual blocks per level going down and one more going
    up, each up block taking the matching down block's output as a skip connection (concatenated),
    resampling by residual blocks, self-attention at ``attention_resolutions`` and in the middle,
    every residual block conditioned by AdaGN on the time embedding
    ``time_embed(psi(t))`` (``Linear-SiLU-Linear``, ``model_channels -> embed_channels``) and on
    z_sem (official ``BeatGANsUNetModel`` built with ``resnet_two_cond=True``, as
    ``BeatGANsAutoencModel``). Input in [-1, 1] scale, output the predicted noise."""

    def __init__(self, config: DiffAEConfig):
        super().__init__()
        mc, emb = config.model_channels, config.embed_channels
        self.model_channels = mc

        def res(cin: int, cout: int, resample: Literal["up", "down"] | None = None) -> ResBlock:
            return ResBlock(cin, cout, emb_channels=emb, cond_channels=config.style_channels,
                            dropout=config.dropout, resample=resample)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = config.channel_mult[0] * mc
        down: list[nn.Module] = [CondSequential(nn.Conv2d(3, ch, 3, padding=1))]
        skips = [ch]  # the channels of every down block's output, in order
        resolution = config.image_size
        last = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if resolution in config.attention_resolutions:
                    layers.append(AttentionBlock(ch, config.num_heads))
                down.append(CondSequential(*layers))
                skips.append(ch)
            if level != last:
                down.append(CondSequential(res(ch, ch, "down")))
                skips.append(ch)
                resolution //= 2
        self.input_blocks = nn.ModuleList(down)
        self.middle_block = CondSequential(res(ch, ch), AttentionBlock(ch, config.num_heads), res(ch, ch))
        up: list[nn.Module] = []
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), mult * mc)]
                ch = mult * mc
                if resolution in config.attention_resolutions:
                    layers.append(AttentionBlock(ch, config.num_heads))
                if level and i == config.num_res_blocks:
                    layers.append(res(ch, ch, "up"))
                    resolution *= 2
                up.append(CondSequential(*layers))
        self.output_blocks = nn.ModuleList(up)
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, 3, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor, z_sem: Tensor) -> Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, z_sem)
            skips.append(h)
        h = self.middle_block(h, emb, z_sem)
        for block in self.output_blocks:  # each level's blocks take its skips last-in first-out
            h = block(torch.cat([h, skips.pop()], dim=1), emb, z_sem)
        return self.out(h)


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU, "relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh, "none": nn.Identity,
}


class MLPLayer(nn.Module):
    """One layer of the latent MLP (official ``MLPLNAct``): ``act(norm(linear(h) * (bias + s)))``
    with ``s = linear_emb(act(time embedding))`` when conditioned (``norm`` a LayerNorm or nothing),
    then dropout. Official checkpoints also hold ``linear_emb`` a second time, as
    ``cond_layers.1`` (the same module registered twice); here it is registered once."""

    def __init__(self, in_channels: int, out_channels: int, *, activation: str, norm: bool, conditioned: bool,
                 cond_channels: int, condition_bias: float, dropout: float):
        super().__init__()
        self.conditioned = conditioned
        self.condition_bias = condition_bias
        self.linear = nn.Linear(in_channels, out_channels)
        self.act = _ACTIVATIONS[activation]()
        if conditioned:
            self.linear_emb = nn.Linear(cond_channels, out_channels)
        self.norm = nn.LayerNorm(out_channels) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if activation in ("relu", "silu", "lrelu") and self.linear.weight.device.type != "meta":
            # official init_weights: Kaiming normal (fan in); a meta tensor (shapes only) has no values
            slope = 0.2 if activation == "lrelu" else 0.0
            for linear in self.modules():
                if isinstance(linear, nn.Linear):
                    nn.init.kaiming_normal_(linear.weight, a=slope,
                                            nonlinearity="leaky_relu" if activation == "lrelu" else "relu")

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        x = self.linear(x)
        if self.conditioned:
            x = x * (self.condition_bias + self.linear_emb(self.act(cond)))
        return self.dropout(self.act(self.norm(x)))


class MLPSkipNet(nn.Module):
    """The latent DDIM's noise predictor over normalised z_sem (paper, "Sampling with diffusion
    autoencoders"; official ``MLPSkipNet``): ``latent_num_layers`` layers of width
    ``latent_hid_channels``, the input z concatenated to the input of every layer in
    ``latent_skip_layers``, every layer but the last conditioned on the time embedding
    ``time_embed(psi(t))`` (``latent_time_emb_channels -> style_channels``), the last layer linear
    back to ``style_channels``."""

    def __init__(self, config: DiffAEConfig):
        super().__init__()
        d, hid, n = config.style_channels, config.latent_hid_channels, config.latent_num_layers
        self.time_channels = config.latent_time_emb_channels
        self.skip_layers = frozenset(config.latent_skip_layers)
        time: list[nn.Module] = []
        for i in range(config.latent_num_time_layers):
            time.append(nn.Linear(self.time_channels if i == 0 else d, d))
            if i < config.latent_num_time_layers - 1:
                time.append(_ACTIVATIONS[config.latent_activation]())
        self.time_embed = nn.Sequential(*time)
        layers = []
        for i in range(n):
            first, final = i == 0, i == n - 1
            cin = d if first else hid
            cin += d if i in self.skip_layers else 0
            layers.append(MLPLayer(
                cin, d if final else hid, activation="none" if final else config.latent_activation,
                norm=config.latent_use_norm and not final, conditioned=not final, cond_channels=d,
                condition_bias=config.latent_condition_bias, dropout=0.0 if final else config.latent_dropout))
        self.layers = nn.ModuleList(layers)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        cond = self.time_embed(timestep_embedding(t, self.time_channels))
        h = z
        for i, layer in enumerate(self.layers):
            if i in self.skip_layers:
                h = torch.cat([h, z], dim=1)
            h = layer(h, cond)
        return h


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class DiffAE(nn.Module):
    """A diffusion autoencoder with its latent DDIM, built from a :class:`DiffAEConfig`.

    Sub-modules: ``encoder`` (:class:`SemanticEncoder`), ``unet`` (:class:`ConditionalUNet`, the
    noise predictor; also ``forward``), ``latent_net`` (:class:`MLPSkipNet`) and the buffers
    ``conds_mean`` / ``conds_std`` (``style_channels`` each: the statistics of z_sem over the
    training set that the latent DDIM's space is normalised by; 0 and 1 until loaded). The beta
    schedules are computed from the config (float64), not stored.

    Images are float tensors ``(N, 3, image_size, image_size)`` in [0, 1], converted to [-1, 1]
    inside. ``encode``, ``decode`` and ``sample`` run without gradients and in eval mode (dropout
    off) whatever the module's mode, which they restore.
    """

    def __init__(self, config: DiffAEConfig):
        super().__init__()
        self.config = config
        self.encoder = SemanticEncoder(config)
        self.unet = ConditionalUNet(config)
        self.latent_net = MLPSkipNet(config)
        self.register_buffer("conds_mean", torch.zeros(config.style_channels))
        self.register_buffer("conds_std", torch.ones(config.style_channels))

    # -- the pieces ---------------------------------------------------------------------------

    def forward(self, x_t: Tensor, t: Tensor, z_sem: Tensor) -> Tensor:
        """``eps_theta(x_t, t, z_sem)``: the noise in ``x_t`` (in [-1, 1] scale) at original
        timesteps ``t`` (long, one per image)."""
        return self.unet(x_t, t, z_sem)

    def alphas_cumprod(self, latent: bool = False) -> list[float]:
        """``alpha_bar_t = prod_{s <= t} (1 - beta_s)`` of the image (or latent) diffusion, in float64."""
        name = self.config.latent_beta_schedule if latent else self.config.beta_schedule
        return torch.cumprod(1 - named_beta_schedule(name, self.config.num_timesteps), dim=0).tolist()

    def diffusion_loss(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The autoencoder's training loss (paper, "Diffusion-based decoder": L_simple; official
        ``training_losses`` with ``LossType.mse``): ``mean ||eps_theta(x_t, t, Enc(x0)) - eps||^2``,
        ``t`` uniform over the T timesteps, ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``. ``image`` in
        [0, 1]; the noise and ``t`` are drawn from ``generator`` (on the images' device)."""
        x0 = self._to_unit(self._check_images(image, "image"))
        n = x0.shape[0]
        t = torch.randint(0, self.config.num_timesteps, (n,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        ab = torch.tensor(self.alphas_cumprod(), dtype=torch.float64, device=x0.device)[t].float()[:, None, None, None]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        return F.mse_loss(self.unet(x_t, t, self.encoder(x0)), noise)

    # -- the public pipelines -----------------------------------------------------------------

    def encode(self, image: Tensor, steps: int = ENCODE_STEPS) -> tuple[Tensor, Tensor]:
        """``(z_sem, x_T)`` of ``image`` (in [0, 1]): ``z_sem = Enc(x0)`` and ``x_T`` the deterministic
        DDIM inversion (eta = 0) of ``x0`` over ``steps`` steps conditioned on ``z_sem`` (paper,
        "Stochastic encoder"; official ``LitModel.encode`` + ``encode_stochastic``, which the
        official autoencoding notebook runs with T=250, the default here)."""
        x0 = self._to_unit(self._check_images(image, "image"))
        with self._inference():
            z_sem = self.encoder(x0)
            x_T = ddim_path(lambda x, t: self.unet(x, t, z_sem), x0, self.alphas_cumprod(),
                            ddim_timesteps(self.config.num_timesteps, steps), invert=True, clip=True)
        return z_sem, x_T

    def decode(self, z_sem: Tensor, x_T: Tensor, steps: int = DECODE_STEPS) -> Tensor:
        """The image (in [0, 1]) that the deterministic DDIM (eta = 0) over ``steps`` steps decodes
        from ``x_T`` conditioned on ``z_sem`` (paper, "Diffusion-based decoder"; official
        ``LitModel.render`` with a given cond, T_eval=20 the default)."""
        x_T = self._check_images(x_T, "x_T")
        z_sem = self._check_codes(z_sem, x_T.shape[0])
        with self._inference():
            x0 = ddim_path(lambda x, t: self.unet(x, t, z_sem), x_T, self.alphas_cumprod(),
                           ddim_timesteps(self.config.num_timesteps, steps), invert=False, clip=True)
        return ((x0 + 1) / 2).clamp(0, 1)

    def sample_semantic(self, noise: Tensor, steps: int = LATENT_STEPS) -> Tensor:
        """z_sem generated by the latent DDIM (eta = 0, no clipping, official ``latent_clip_sample =
        False``) from ``noise`` ``(N, style_channels)``, then denormalised with ``conds_mean`` /
        ``conds_std`` (when ``latent_znormalize``), as official ``render_uncondition``."""
        noise = self._check_codes(noise, None, "noise")
        with self._inference():
            z = ddim_path(self.latent_net, noise, self.alphas_cumprod(latent=True),
                          ddim_timesteps(self.config.num_timesteps, steps), invert=False, clip=False)
            if self.config.latent_znormalize:
                z = z * self.conds_std + self.conds_mean
        return z

    def sample(self, n: int, seed: int, steps: int = DECODE_STEPS,
               latent_steps: int = LATENT_STEPS) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` unconditional images (in [0, 1]) with their ``z_sem`` and ``x_T``, as the official
        FFHQ-256 latent pipeline (``LitModel.sample`` -> ``render_uncondition``): ``x_T`` and then
        the latent noise drawn (in that order) from a CPU ``torch.Generator`` seeded with ``seed``,
        ``z_sem`` by the latent DDIM (:meth:`sample_semantic`, ``latent_steps``), the image by
        :meth:`decode` (``steps``). Defaults: the templates' ``T_eval = latent_T_eval = 20``.
        The same seed gives the same noise on any device, and bit-identical outputs on the CPU."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        generator = torch.Generator(device="cpu").manual_seed(seed)
        size = self.config.image_size
        device = self.conds_mean.device
        x_T = torch.randn(n, 3, size, size, generator=generator).to(device)
        noise = torch.randn(n, self.config.style_channels, generator=generator).to(device)
        z_sem = self.sample_semantic(noise, latent_steps)
        return self.decode(z_sem, x_T, steps), z_sem, x_T

    # -- helpers ------------------------------------------------------------------------------

    @contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def _check_images(self, x: Tensor, name: str) -> Tensor:
        size = self.config.image_size
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a tensor (N, 3, {size}, {size}), got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a float tensor, got {x.dtype}")
        return x.to(device=self.conds_mean.device, dtype=self.conds_mean.dtype)

    def _check_codes(self, z: Tensor, n: int | None, name: str = "z_sem") -> Tensor:
        d = self.config.style_channels
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != d or (n is not None and z.shape[0] != n):
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            want = f"({n if n is not None else 'N'}, {d})"
            raise ValueError(f"{name} must be a float tensor {want}, got {shape}")
        return z.to(device=self.conds_mean.device, dtype=self.conds_mean.dtype)

    @staticmethod
    def _to_unit(image: Tensor) -> Tensor:
        return image * 2 - 1


# --------------------------------------------------------------------------------------------
# The official checkpoints, and this module's own files
# --------------------------------------------------------------------------------------------

_UNET_PARTS = ("input_blocks.", "middle_block.", "output_blocks.", "out.")
_ALIAS = re.compile(r"latent_net\.layers\.(\d+)\.cond_layers\.1\.(weight|bias)")
_IGNORED = ("x_T",)  # the fixed noise of the official training logger (LitModel.x_T)


def _own_key(official: str) -> str | None:
    """This module's name of an ``ema_model.``-less official key, or ``None`` if it has none."""
    if official.startswith("time_embed.time_embed."):
        return "unet.time_embed." + official[len("time_embed.time_embed."):]
    if official.startswith(_UNET_PARTS):
        return "unet." + official
    if official.startswith(("encoder.", "latent_net.")):
        return official
    return None


def _read_checkpoint(path: Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: the restricted unpickler, which
    rebuilds tensors and plain containers and refuses any other global.

    The official checkpoints were written by PyTorch Lightning 1.4.5, which keys the callbacks'
    states by the callback *class* (``{ModelCheckpoint: {...}}``); those ``pytorch_lightning.*``
    globals (and only those) are named in the file's list of globals
    (``torch.serialization.get_unsafe_globals_in_checkpoint``, which reads the pickle without running
    it) and mapped to inert placeholder classes defined here, so that the file loads with
    ``weights_only=True`` without Lightning and without importing or calling anything of it."""
    placeholders: list[tuple[type, str]] = []
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if lister is not None and hasattr(torch.serialization, "safe_globals"):
        try:
            names = lister(str(path))
        except Exception:  # not a zip checkpoint: torch.load below says why
            names = []
        placeholders = [(type(name.rsplit(".", 1)[-1], (), {"__module__": __name__}), name)
                        for name in names if name.startswith(("pytorch_lightning.", "lightning."))]
    allowed = torch.serialization.safe_globals(placeholders) if placeholders else nullcontext()
    try:
        with allowed:
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a refused global, not a torch file, a truncated zip
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", str(exc))
        reason = found.group(1) if found else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path}: not readable as an official DiffAE checkpoint with "
                         f"torch.load(weights_only=True): {reason[:300]}") from None


def _listing(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def convert_official_checkpoint(path_or_state_dict: str | os.PathLike | Mapping[str, Any],
                                config: DiffAEConfig) -> dict[str, Tensor]:
    """This module's state dict (for ``DiffAE(config).load_state_dict``) from an official DiffAE
    checkpoint.

    This is the only place in fair-methods that reads a pickled checkpoint (the project's other one
    is ``fair_face.weights``, for insightface's ``.pth``), and it reads a path only with
    ``torch.load(path, map_location="cpu", weights_only=True)`` (see :func:`_read_checkpoint` for
    the Lightning 1.4 callback classes); everything else of the project loads safetensors.

    ``path_or_state_dict``: a ``.ckpt`` path, a loaded checkpoint (a dict with ``state_dict``), or
    the ``state_dict`` itself. The official FFHQ-256 files are
    ``checkpoints/ffhq256_autoenc/last.ckpt`` (the autoencoder alone: no latent net, no
    ``conds_mean``) and ``checkpoints/ffhq256_autoenc_latent/last.ckpt`` (``LitModel`` with
    ``train_mode = latent_diffusion``: the same ``BeatGANsAutoencModel`` with ``latent_net`` as a
    sub-module, the autoencoder's weights loaded from the former, plus the ``conds_mean`` /
    ``conds_std`` buffers), so the latter holds a whole :class:`DiffAE`. Its ``state_dict`` keys:

    * ``ema_model.time_embed.time_embed.{0,2}.*`` -> ``unet.time_embed.{0,2}.*``;
    * ``ema_model.{input_blocks,middle_block,output_blocks,out}.*`` -> ``unet.`` + the same;
    * ``ema_model.encoder.*`` -> ``encoder.*``; ``ema_model.latent_net.*`` -> ``latent_net.*``;
    * ``ema_model.latent_net.layers.<i>.cond_layers.1.*``: dropped, after checking that it equals
      ``layers.<i>.linear_emb.*`` (MLPLNAct registers that one module under both names);
    * ``conds_mean``, ``conds_std`` (LitModel's ``(1, 512)`` buffers) -> the same, ``(512,)``;
    * ``model.*`` (the non-EMA training weights) and ``x_T`` (the logger's fixed noise): ignored.

    The EMA weights are the ones the official code samples and encodes with. ``conds_mean`` /
    ``conds_std`` are also taken from the checkpoint's top level when its ``state_dict`` lacks them.
    Tensors are returned as contiguous float32 copies, in this module's key order. Any missing or
    unexpected key, or a shape that differs from ``DiffAE(config)``'s, is one ``ValueError`` naming
    them.
    """
    source = _read_checkpoint(Path(path_or_state_dict)) if isinstance(path_or_state_dict, (str, os.PathLike)) \
        else path_or_state_dict
    if not isinstance(source, Mapping):
        raise ValueError(f"an official DiffAE checkpoint is a dict, got {type(source).__name__}")
    top: Mapping[str, Any] = {}
    state = source
    if isinstance(source.get("state_dict"), Mapping):
        top, state = source, source["state_dict"]

    converted: dict[str, Tensor] = {}
    aliases: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            unexpected.append(f"{key!r} (not a tensor)" if isinstance(key, str) else repr(key))
            continue
        if key.startswith("model.") or key in _IGNORED:
            continue
        if key in ("conds_mean", "conds_std"):
            converted[key] = value.reshape(-1)
            continue
        own = _own_key(key[len("ema_model."):]) if key.startswith("ema_model.") else None
        if own is None:
            unexpected.append(key)
        elif _ALIAS.fullmatch(own):
            aliases[own] = value
        else:
            converted[own] = value
    for key in ("conds_mean", "conds_std"):
        if key not in converted and isinstance(top.get(key), Tensor):
            converted[key] = top[key].reshape(-1)

    with torch.device("meta"):
        reference = {k: tuple(v.shape) for k, v in DiffAE(config).state_dict().items()}
    for alias, value in aliases.items():
        layer, part = _ALIAS.fullmatch(alias).groups()  # type: ignore[union-attr]
        target = f"latent_net.layers.{layer}.linear_emb.{part}"
        if target not in converted:
            unexpected.append("ema_model." + alias)
        elif value.shape != converted[target].shape or not torch.equal(value, converted[target]):
            raise ValueError(f"ema_model.{alias} differs from ema_model.{target}: the official MLPLNAct "
                             f"registers one module under both names, so they must be equal")
    unexpected += [k for k in converted if k not in reference]
    missing = [k for k in reference if k not in converted]
    if missing or unexpected:
        hint = ""
        if any(k.startswith("latent_net.") for k in missing) and not any(k.startswith("latent_net.") for k in converted):
            hint = (" (no latent net: the autoencoder-only checkpoint ffhq256_autoenc/last.ckpt? "
                    "ffhq256_autoenc_latent/last.ckpt holds the autoencoder and the latent DDIM)")
        elif not any(k.startswith("ema_model.") for k in state if isinstance(k, str)):
            hint = " (no ema_model.* key: not an official DiffAE Lightning checkpoint's state_dict?)"
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_listing(unexpected)}")
        raise ValueError(f"the checkpoint does not match DiffAE({config!r}): {'; '.join(parts)}{hint}")
    wrong = [f"{k} {tuple(converted[k].shape)} (expected {shape})" for k, shape in reference.items()
             if tuple(converted[k].shape) != shape]
    if wrong:
        raise ValueError(f"the checkpoint does not match the config's shapes: {_listing(wrong, 10)}")
    return {k: converted[k].detach().to(dtype=torch.float32, copy=True).contiguous() for k in reference}


def save_safetensors(model: DiffAE, folder: str | os.PathLike) -> Path:
    """Write ``model`` to ``folder`` (created if needed) as ``model.safetensors`` (its state dict,
    ``safetensors.torch.save_file``) and ``config.json`` (its :class:`DiffAEConfig`), each
    atomically (a temporary file in ``folder``, fsynced, then ``os.replace``: ``fair_core.atomic.
    atomic_path``), the weights first. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "model": "fair_methods.vlbc.diffae.DiffAE"})
    with atomic_path(folder / CONFIG_FILE) as tmp:
        tmp.write_text(model.config.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return folder


def load_diffae(folder: str | os.PathLike, device: str | torch.device = "cpu") -> DiffAE:
    """The :class:`DiffAE` that :func:`save_safetensors` wrote to ``folder``, in eval mode on
    ``device``: ``config.json`` validated as a :class:`DiffAEConfig` (unknown fields refused), the
    weights read with ``safetensors.torch.load_file`` and loaded strictly. No pickle is read and no
    code is executed. A missing file, an invalid config or weights that do not match it is a
    ``ValueError``."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ValueError(f"{path}: missing (a DiffAE folder holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = DiffAEConfig.model_validate_json(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{config_path}: not a valid DiffAE config: {exc}") from None
    try:
        state = load_file(str(weights_path), device="cpu")
    except Exception as exc:  # a truncated or corrupt file
        raise ValueError(f"{weights_path}: not a readable safetensors file: {exc}") from None
    model = DiffAE(config)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(f"{weights_path}: does not match {CONFIG_FILE}: missing {_listing(missing) or 'none'}; "
                         f"unexpected {_listing(unexpected) or 'none'}; wrong shape {_listing(wrong) or 'none'}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
