"""ContraCLIP's latent paths as a `fair augment` editor (Tzelepis et al., 2022; used by VLBC,
D'Inca et al., WACV 2024, to edit the protected attribute of DiffAE faces).

A path ``k`` is a set of ``2N`` RBF support vectors ``s_i`` (N dipoles ``(v, -v)``) with weights
``a_i = +-1`` and widths ``gamma_i``; its direction at a code ``z`` is the normalised gradient of
``f(z) = sum_i a_i exp(-gamma_i ||z - s_i||^2)``::

    g(z) = -2 sum_i a_i gamma_i exp(-gamma_i ||z - s_i||^2) (z - s_i),     g <- g / ||g||

and an edit takes ``n`` steps ``z <- z + d * eps * g(z)`` with the direction ``d = +-1`` and
``n`` drawn uniformly from the edit's step range (VLBC: ``eps = 0.05``; e.g. CelebA dark skin is
path 12, ``d = +1``, 25-35 steps). The original draws ``n`` unseeded; here it comes from the
run's generator (each image its own ``n``). The direction is recomputed at every step (the path
curves). Paths are read from safetensors only: ``support_sets`` ``(K, 2N, D)``, ``alphas``
``(K, 2N)``, ``log_gammas`` ``(K, 2N)``; :func:`convert_contraclip` makes that file from the
original ``LatentSupportSets`` state dict (``SUPPORT_SETS`` ``(K, 2N*D)``, ``ALPHAS``, ``LOGGAMMA``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors.torch import load_file, save_file
from torch import Tensor

from fair_core import FairError
from fair_core.atomic import atomic_path
from fair_core.augment import Editor, steps_in

PATH_KEYS = ("support_sets", "alphas", "log_gammas")


class PathEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: int = Field(ge=0, description="index of the latent path")
    direction: int = Field(description="+1 or -1 along the path")
    steps: tuple[int, int] = Field(description="range of the number of steps, both ends included")

    @field_validator("direction")
    @classmethod
    def _sign(cls, value: int) -> int:
        if value not in (1, -1):
            raise ValueError("must be 1 or -1")
        return value

    @field_validator("steps")
    @classmethod
    def _range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= value[0] <= value[1] <= 10_000:
            raise ValueError("must be [lo, hi] with 0 <= lo <= hi <= 10000")
        return value


class ContraCLIPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: str = Field(description="safetensors file of the latent paths (support_sets, alphas, log_gammas)")
    edits: dict[str, PathEdit] = Field(description='per "attribute=value" to reach: its path, direction and steps')
    eps: float = Field(0.05, gt=0, description="step size along the normalised direction")


def path_direction(z: Tensor, support: Tensor, alphas: Tensor, gammas: Tensor) -> Tensor:
    """The normalised ``g(z)`` of one path for codes ``z`` ``(B, D)``; ``support`` ``(M, D)``,
    ``alphas`` and ``gammas`` ``(M,)``."""
    diff = z.unsqueeze(1) - support.unsqueeze(0)  # (B, M, D)
    weight = alphas * gammas * torch.exp(-gammas * diff.pow(2).sum(-1))  # (B, M)
    grad = -2 * (weight.unsqueeze(-1) * diff).sum(1)
    return grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)


class ContraCLIP(Editor):
    """Walk each code along a ContraCLIP latent path (steps drawn per image, seeded)."""

    Params = ContraCLIPParams
    description = "ContraCLIP RBF latent paths (VLBC's editor); paths from safetensors"

    def __init__(self, params: ContraCLIPParams, device: torch.device):
        super().__init__(params, device)
        path = Path(params.paths)
        if not path.is_file():
            raise FairError(f"editor.params.paths: no file {path}")
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for a broken file
            raise FairError(f"editor.params.paths: {path} is not a safetensors file ({exc})") from None
        missing = [k for k in PATH_KEYS if k not in tensors]
        if missing:
            raise FairError(f"editor.params.paths: {path} has no {', '.join(missing)}")
        self.support, self.alphas = tensors["support_sets"].float(), tensors["alphas"].float()
        self.gammas = tensors["log_gammas"].float().exp()
        k, m = self.alphas.shape
        if self.support.dim() != 3 or self.support.shape[:2] != (k, m) or self.gammas.shape != (k, m):
            raise FairError(f"editor.params.paths: {path}: support_sets {tuple(self.support.shape)}, alphas "
                            f"{(k, m)} and log_gammas {tuple(self.gammas.shape)} do not match (K, 2N, D), (K, 2N)")
        for key, edit in params.edits.items():
            if edit.path >= k:
                raise FairError(f"editor.params.edits.{key}.path: {edit.path} but {path} has {k} paths")

    def edit(self, codes: Tensor, attribute: str, value: str, generator: torch.Generator) -> Tensor:
        key = f"{attribute}={value}"
        edit = self.params.edits.get(key)
        if edit is None:
            raise FairError(f"editor.params.edits: no edit for {key!r} (it has {', '.join(self.params.edits) or 'none'})")
        if codes.shape[1] != self.support.shape[2]:
            raise FairError(f"editor.params.paths: the paths are {self.support.shape[2]}-d; the generator's codes "
                            f"are {codes.shape[1]}-d")
        n = len(codes)
        steps = torch.tensor([steps_in(edit.steps, generator) for _ in range(n)])
        support, alphas, gammas = (t[edit.path].to(codes.device) for t in (self.support, self.alphas, self.gammas))
        z = codes.float().clone()
        for step in range(int(steps.max()) if n else 0):
            moving = (steps > step).to(codes.device).unsqueeze(1)
            z = torch.where(moving, z + edit.direction * self.params.eps * path_direction(z, support, alphas, gammas), z)
        return z.to(codes.dtype)


def convert_contraclip(state_dict: dict[str, Tensor], dim: int, output: str | Path) -> Path:
    """Write the paths of an original ``LatentSupportSets`` state dict (``SUPPORT_SETS``
    ``(K, 2N*D)``, ``ALPHAS`` and ``LOGGAMMA`` ``(K, 2N)``) to a safetensors file."""
    try:
        support, alphas, log_gammas = (state_dict[k].float() for k in ("SUPPORT_SETS", "ALPHAS", "LOGGAMMA"))
    except KeyError as exc:
        raise FairError(f"the state dict has no {exc.args[0]} (not a ContraCLIP LatentSupportSets)") from None
    k, m = alphas.shape
    if support.shape != (k, m * dim):
        raise FairError(f"SUPPORT_SETS is {tuple(support.shape)}; with ALPHAS {(k, m)} and D = {dim} it must be "
                        f"{(k, m * dim)}")
    output = Path(output)
    with atomic_path(output) as tmp:
        save_file({"support_sets": support.reshape(k, m, dim).contiguous(), "alphas": alphas.contiguous(),
                   "log_gammas": log_gammas.contiguous()}, str(tmp))
    return output
