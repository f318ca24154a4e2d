"""DiffAE (fair_methods.vlbc.diffae): a tiny configuration on the CPU: output shapes, deterministic
DDIM, seeded sampling, reconstruction through DDIM inversion after a short training, the official
checkpoint converter on an official-style checkpoint, and the safetensors + config.json round trip.

One thread for the whole file: these are small tensors, and the machine is shared (more threads
only spin; measured 30x more CPU time under load)."""

import json
import pickle
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from fair_methods.vlbc.diffae import (
    DiffAE,
    DiffAEConfig,
    convert_official_checkpoint,
    ddim_timesteps,
    load_diffae,
    named_beta_schedule,
    save_safetensors,
)

TINY = DiffAEConfig(
    image_size=16, model_channels=16, channel_mult=(1, 1), attention_resolutions=(8,), num_res_blocks=1,
    enc_channel_mult=(1, 2), enc_attn_resolutions=(8,), enc_num_res_blocks=1, style_channels=32, embed_channels=32,
    latent_num_layers=3, latent_hid_channels=64, latent_skip_layers=(1, 2), latent_time_emb_channels=16, dropout=0.0,
)
STEPS = 10  # DDIM steps of the quick checks (stride 100 over T = 1000)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_model(config: DiffAEConfig = TINY, seed: int = 0) -> DiffAE:
    """A DiffAE whose every weight and both latent statistics are random (a fresh one starts its
    last convolutions at zero, which would hide a wrong mapping of those)."""
    model = DiffAE(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        model.conds_mean.copy_(torch.randn(config.style_channels, generator=g))
        model.conds_std.copy_(torch.rand(config.style_channels, generator=g) + 0.5)
    return model


def images(n: int, seed: int) -> torch.Tensor:
    """``n`` smooth 16 px images in [0, 1]: random 4x4 colour grids, bilinearly upsampled."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=16, mode="bilinear", align_corners=False)


def outputs(model: DiffAE, x: torch.Tensor):
    """Everything the public API produces for ``x`` (encode, decode, sample)."""
    z, x_T = model.encode(x, steps=STEPS)
    return z, x_T, model.decode(z, x_T, steps=STEPS), *model.sample(2, seed=7, steps=STEPS, latent_steps=STEPS)


# --- configuration and schedules ------------------------------------------------------------


def test_defaults_are_the_official_ffhq256_model():
    c = DiffAEConfig()
    assert (c.image_size, c.model_channels, c.channel_mult, c.num_res_blocks, c.attention_resolutions) == \
        (256, 128, (1, 1, 2, 2, 4, 4), 2, (16,))
    assert (c.enc_channel_mult, c.enc_num_res_blocks, c.enc_attn_resolutions, c.style_channels) == \
        ((1, 1, 2, 2, 4, 4, 4), 2, (16,), 512)
    assert (c.embed_channels, c.num_heads, c.dropout, c.num_timesteps, c.beta_schedule) == (512, 1, 0.1, 1000, "linear")
    assert (c.latent_num_layers, c.latent_hid_channels, c.latent_skip_layers, c.latent_activation) == \
        (10, 2048, tuple(range(1, 10)), "silu")
    assert (c.latent_use_norm, c.latent_condition_bias, c.latent_beta_schedule, c.latent_znormalize) == \
        (True, 1.0, "const0.008", True)
    with torch.device("meta"):  # no memory: shapes only
        model = DiffAE(c)
    # the official BeatGANsAutoencModel of ffhq256_autoenc_latent has 222,601,987 parameters
    # (counted on the official code: 138.3 M UNet, 30.2 M encoder, 54.1 M latent MLP)
    assert sum(p.numel() for p in model.parameters()) == 222_601_987


def test_config_refuses_unknown_fields_and_inconsistent_numbers():
    with pytest.raises(ValueError, match="extra"):
        DiffAEConfig(channels=3)
    with pytest.raises(ValueError, match="cannot be halved"):
        DiffAEConfig(image_size=20, channel_mult=(1, 2, 4))
    with pytest.raises(ValueError, match="latent_skip_layers"):
        DiffAEConfig.model_validate(TINY.model_dump() | {"latent_skip_layers": (3,)})
    with pytest.raises(ValueError, match="unknown beta schedule"):
        DiffAEConfig(beta_schedule="cosine")


def test_schedules_and_ddim_spacing_follow_the_official_rules():
    betas = named_beta_schedule("linear", 1000)
    assert betas.dtype == torch.float64 and betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.equal(named_beta_schedule("const0.008", 1000), torch.full((1000,), 0.008, dtype=torch.float64))
    # space_timesteps(T, "ddimN"): the smallest integer stride giving exactly N steps, from 0
    assert ddim_timesteps(1000, 20) == list(range(0, 1000, 50))
    assert ddim_timesteps(1000, 250) == list(range(0, 1000, 4))
    assert ddim_timesteps(1000, 30) == list(range(0, 1000, 34))
    with pytest.raises(ValueError, match="no integer stride"):
        ddim_timesteps(1000, 600)


# --- the public API ---------------------------------------------------------------------------


def test_shapes_of_encode_decode_and_sample():
    model = random_model()
    x = images(3, seed=1)
    z, x_T = model.encode(x, steps=STEPS)
    assert z.shape == (3, 32) and x_T.shape == (3, 3, 16, 16)
    out = model.decode(z, x_T, steps=STEPS)
    assert out.shape == (3, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    image, z_sem, noise = model.sample(2, seed=0, steps=STEPS, latent_steps=STEPS)
    assert image.shape == (2, 3, 16, 16) and z_sem.shape == (2, 32) and noise.shape == (2, 3, 16, 16)
    assert all(torch.isfinite(t).all() for t in (z, x_T, out, image, z_sem))
    with pytest.raises(ValueError, match=r"image must be a tensor \(N, 3, 16, 16\)"):
        model.encode(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"z_sem must be a float tensor \(3, 32\)"):
        model.decode(z[:2], x_T)


def test_ddim_is_deterministic_and_sampling_is_seeded():
    model = random_model(TINY.model_copy(update={"dropout": 0.1}))
    model.train()  # the pipelines run in eval mode (dropout off) whatever the module's mode
    x = images(2, seed=2)
    z, x_T = model.encode(x, steps=STEPS)
    assert torch.equal(model.decode(z, x_T, steps=STEPS), model.decode(z, x_T, steps=STEPS))
    assert all(torch.equal(a, b) for a, b in zip(model.encode(x, steps=STEPS), (z, x_T), strict=True))
    assert model.training
    first = model.sample(2, seed=3, steps=STEPS, latent_steps=STEPS)
    again = model.sample(2, seed=3, steps=STEPS, latent_steps=STEPS)
    other = model.sample(2, seed=4, steps=STEPS, latent_steps=STEPS)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(first, other, strict=True))
    # the noise is drawn x_T first, then the latent noise, from one generator seeded with the seed
    g = torch.Generator().manual_seed(3)
    assert torch.equal(first[2], torch.randn(2, 3, 16, 16, generator=g))
    assert torch.equal(first[1], model.sample_semantic(torch.randn(2, 32, generator=g), steps=STEPS))


@pytest.fixture(scope="module")
def trained():
    """The tiny model trained with the paper's L_simple on four smooth 16 px images: 300 Adam
    steps (lr 2e-3) of batch 8 (each image twice, random t and noise); ~10 s of one CPU."""
    torch.manual_seed(0)
    model = DiffAE(TINY)
    data = images(4, seed=0)
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(300):
        loss = model.diffusion_loss(data.repeat(2, 1, 1, 1), generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), data, losses


def test_inversion_then_decoding_reconstructs_the_input(trained):
    """``decode(*encode(x))`` with 50 DDIM steps each way. Measured: mean |error| 0.011, max 0.049
    (pixels in [0, 1]); 0.026 with 20 steps, 0.007 with 100: the error is mostly the DDIM
    discretisation (the inversion takes each step with the noise predicted at its start, the
    decoding with the one at its end; they agree as the steps shrink), the rest the model's error
    after 300 steps. Tolerances: 0.03 mean and 0.15 max (about 3x the measurement, for other
    platforms' rounding of the training), and far below the 0.22 that separates two of the images.
    Decoding the same z_sem from a random x_T instead lands 0.27-0.33 away: x_T carries the rest."""
    model, data, losses = trained
    assert sum(losses[-20:]) / 20 < 0.1 < losses[0]
    z, x_T = model.encode(data, steps=50)
    assert 0.8 < x_T.std().item() < 1.2  # inverted to (about) unit Gaussian noise
    reconstruction = model.decode(z, x_T, steps=50)
    error = (reconstruction - data).abs()
    closest_other = min((data[i] - data[j]).abs().mean().item() for i in range(4) for j in range(4) if i != j)
    assert error.mean().item() < 0.03 and error.max().item() < 0.15
    assert error.mean().item() < closest_other / 5
    from_noise = model.decode(z, torch.randn(x_T.shape, generator=torch.Generator().manual_seed(1)), steps=50)
    assert (from_noise - data).abs().mean().item() > 5 * error.mean().item()


# --- the official checkpoint ------------------------------------------------------------------


def official_key(key: str) -> str:
    """The name the official Lightning checkpoint gives this module's ``key`` (LitModel.ema_model
    is a BeatGANsAutoencModel: time_embed is a TimeStyleSeperateEmbed holding its MLP as
    ``time_embed``, the UNet's parts sit at its top level beside ``encoder`` and ``latent_net``)."""
    if key.startswith("unet.time_embed."):
        return "ema_model.time_embed.time_embed." + key.removeprefix("unet.time_embed.")
    if key.startswith("unet."):
        return "ema_model." + key.removeprefix("unet.")
    assert key.startswith(("encoder.", "latent_net.")), key
    return "ema_model." + key


def official_state_dict(model: DiffAE) -> dict:
    """The ``state_dict`` of an official checkpoint holding ``model``: the EMA weights under
    ``ema_model.``, training weights (different) under ``model.``, MLPLNAct's ``cond_layers.1``
    (the same module as its ``linear_emb``, so the same tensor), the logger's ``x_T``, and the
    latent statistics as LitModel's (1, D) buffers."""
    state = {}
    for key, value in model.state_dict().items():
        if key in ("conds_mean", "conds_std"):
            state[key] = value[None, :].clone()
            continue
        state[official_key(key)] = value.clone()
        state["model." + official_key(key).removeprefix("ema_model.")] = value + 1
    for key in list(state):
        if key.startswith("ema_model.latent_net.") and ".linear_emb." in key:
            state[key.replace(".linear_emb.", ".cond_layers.1.")] = state[key]
    state["x_T"] = torch.randn(4, 3, 16, 16)
    return state


# Official names, from model/unet.py and model/blocks.py, of some of TINY's tensors.
OFFICIAL_NAMES = {
    "ema_model.time_embed.time_embed.0.weight": (32, 16),
    "ema_model.input_blocks.0.0.weight": (16, 3, 3, 3),
    "ema_model.input_blocks.1.0.emb_layers.1.weight": (32, 32),  # (t_s, t_b): 2 x 16 channels
    "ema_model.input_blocks.1.0.cond_emb_layers.1.weight": (16, 32),
    "ema_model.input_blocks.3.1.qkv.weight": (48, 16, 1),  # level 1 (8 px): attention
    "ema_model.middle_block.1.proj_out.weight": (16, 16, 1),
    "ema_model.output_blocks.0.0.skip_connection.weight": (16, 32, 1, 1),  # 16 + 16 skip -> 16
    "ema_model.output_blocks.1.2.out_layers.3.weight": (16, 16, 3, 3),  # the up-sampling block
    "ema_model.out.2.weight": (3, 16, 3, 3),
    "ema_model.encoder.input_blocks.3.0.skip_connection.weight": (32, 16, 1, 1),
    "ema_model.encoder.input_blocks.3.1.qkv.weight": (96, 32, 1),
    "ema_model.encoder.out.3.weight": (32, 32, 1, 1),
    "ema_model.latent_net.time_embed.2.weight": (32, 32),
    "ema_model.latent_net.layers.1.linear.weight": (64, 96),  # skip layer: 64 hidden + 32 input
    "ema_model.latent_net.layers.1.cond_layers.1.weight": (64, 32),
    "ema_model.latent_net.layers.2.linear.weight": (32, 96),
}


@pytest.fixture
def lightning_callback_class(monkeypatch):
    """A stand-in for ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``: Lightning
    1.4.5 (the official code's) keys a checkpoint's callback states by the callback's class."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    cls = type("ModelCheckpoint", (), {"__module__": names[-1]})
    sys.modules[names[-1]].ModelCheckpoint = cls
    yield cls


def test_converter_maps_an_official_checkpoint(tmp_path, lightning_callback_class, monkeypatch):
    model = random_model(seed=5)
    state = official_state_dict(model)
    assert {k: tuple(state[k].shape) for k in OFFICIAL_NAMES} == OFFICIAL_NAMES
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.4.5",
                "callbacks": {lightning_callback_class: {"best_model_score": torch.tensor(0.5)}},
                "hyper_parameters": {"img_size": 16}}, path)
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"):
        monkeypatch.delitem(sys.modules, name)  # reading it must not need (or import) Lightning

    converted = convert_official_checkpoint(path, TINY)
    assert list(converted) == list(model.state_dict())
    assert all(torch.equal(converted[k], v) for k, v in model.state_dict().items())
    fresh = DiffAE(TINY)
    fresh.load_state_dict(converted, strict=True)
    x = images(2, seed=6)
    assert all(torch.equal(a, b) for a, b in zip(outputs(fresh, x), outputs(model, x), strict=True))
    assert "pytorch_lightning" not in sys.modules
    # the loaded checkpoint itself (a dict with state_dict) and a bare state_dict convert alike
    again = convert_official_checkpoint(state, TINY)
    assert all(torch.equal(again[k], v) for k, v in converted.items())


def test_converter_names_missing_and_unexpected_keys():
    model = random_model(seed=8)
    state = official_state_dict(model)
    del state["ema_model.encoder.out.3.weight"]
    with pytest.raises(ValueError, match=r"missing 1 key\(s\): encoder\.out\.3\.weight"):
        convert_official_checkpoint({"state_dict": state}, TINY)

    state = official_state_dict(model)
    state["ema_model.time_embed.style.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected 1 key\(s\): ema_model\.time_embed\.style\.weight"):
        convert_official_checkpoint(state, TINY)

    state = official_state_dict(model)  # the autoencoder-only checkpoint: no latent net, no statistics
    for key in [k for k in state if "latent_net" in k or k.startswith("conds_")]:
        del state[key]
    with pytest.raises(ValueError, match=r"missing .*conds_mean.*ffhq256_autoenc_latent/last\.ckpt holds"):
        convert_official_checkpoint(state, TINY)

    state = official_state_dict(model)
    state["ema_model.latent_net.layers.0.cond_layers.1.bias"] = torch.zeros(64)
    with pytest.raises(ValueError, match="cond_layers.1.bias differs"):
        convert_official_checkpoint(state, TINY)

    with pytest.raises(ValueError, match=r"input_blocks\.0\.0\.weight \(16, 3, 3, 3\) \(expected \(32, 3, 3, 3\)\)"):
        convert_official_checkpoint(official_state_dict(model), TINY.model_copy(update={"channel_mult": (2, 2)}))


def test_converter_refuses_what_weights_only_refuses(tmp_path, monkeypatch):
    module = types.ModuleType("evil")

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    Payload.__module__ = "evil"
    module.Payload = Payload
    monkeypatch.setitem(sys.modules, "evil", module)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "extra": Payload()}, path)
    with pytest.raises(ValueError, match=r"evil\.ckpt: not readable .*weights_only=True"):
        convert_official_checkpoint(path, TINY)
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.ckpt: not readable"):
        convert_official_checkpoint(tmp_path / "text.ckpt", TINY)


# --- this module's own files ------------------------------------------------------------------


def test_safetensors_and_config_round_trip(tmp_path, monkeypatch):
    config = TINY.model_copy(update={"dropout": 0.1, "latent_activation": "lrelu"})
    model = random_model(config, seed=9)
    folder = save_safetensors(model, tmp_path / "diffae")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no temp file left
    written = json.loads((folder / "config.json").read_text())
    assert written["channel_mult"] == [1, 1] and written["latent_activation"] == "lrelu"
    assert DiffAEConfig.model_validate(written) == config

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle-based loading was called")

    with monkeypatch.context() as patch:
        for owner, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
            patch.setattr(owner, name, forbidden)
        loaded = load_diffae(folder)
    assert loaded.config == config and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    x = images(2, seed=10)
    assert all(torch.equal(a, b) for a, b in zip(outputs(loaded, x), outputs(model, x), strict=True))

    written["num_layers"] = 3  # unknown field
    (folder / "config.json").write_text(json.dumps(written))
    with pytest.raises(ValueError, match="not a valid DiffAE config"):
        load_diffae(folder)
    (folder / "config.json").write_text(TINY.model_copy(update={"embed_channels": 64}).model_dump_json())
    # the weights are of another architecture now
    with pytest.raises(ValueError, match="does not match config.json"):
        load_diffae(folder)
