"""DiffAE (FFHQ-256) as the `fair augment` generator: VLBC's synthetic faces.

Weights are a folder or Hub repo holding ``model.safetensors`` and ``config.json``
(:func:`~fair_methods.vlbc.diffae.save_safetensors`); `fair convert-weights diffae
ffhq256_autoenc_latent/last.ckpt OUT` makes one from the official checkpoint, once.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fair_core import FairError
from fair_core.augment import Generator

from .diffae import DiffAEConfig, convert_official_checkpoint, load_diffae, save_safetensors


class DiffAEParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: str = Field(description="folder or Hub repo id with model.safetensors and config.json")
    steps: int = Field(20, ge=1, description="DDIM steps of decoding and sampling")
    latent_steps: int = Field(20, ge=1, description="DDIM steps of the latent (z_sem) sampler")
    encode_steps: int = Field(250, ge=1, description="DDIM steps of the inversion of real images")


class DiffAEGenerator(Generator):
    """Diffusion autoencoder: codes are z_sem (512), noise is x_T (3 x 256 x 256)."""

    Params = DiffAEParams
    description = "DiffAE FFHQ-256 (Preechakul et al., CVPR 2022), safetensors weights"

    def __init__(self, params: DiffAEParams, device: torch.device):
        super().__init__(params, device)
        folder = Path(params.weights)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            try:
                folder = Path(snapshot_download(params.weights, allow_patterns=["model.safetensors", "config.json"]))
            except Exception as exc:  # offline, unknown repo, invalid id: one line
                raise FairError(f"generator.params.weights: cannot get {params.weights} ({type(exc).__name__}: "
                                f"{exc})") from None
        try:
            self.model = load_diffae(folder, device)
        except (ValueError, OSError) as exc:
            raise FairError(f"generator.params.weights: {exc}") from None

    def sample(self, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.sample(n, seed, steps=self.params.steps, latent_steps=self.params.latent_steps)

    def decode(self, codes: Tensor, noise: Tensor) -> Tensor:
        return self.model.decode(codes.to(self.device), noise.to(self.device), steps=self.params.steps)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode(images.to(self.device), steps=self.params.encode_steps)

    @classmethod
    def convert_weights(cls, checkpoint: Path, output_dir: Path) -> None:
        try:
            model_state = convert_official_checkpoint(checkpoint, DiffAEConfig())
        except (ValueError, OSError) as exc:
            raise FairError(f"{checkpoint}: {exc}") from None
        from .diffae import DiffAE

        model = DiffAE(DiffAEConfig())
        model.load_state_dict(model_state)
        save_safetensors(model, output_dir)
