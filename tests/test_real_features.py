"""DrPO feature encoders for real generators, on tiny random weights in the real formats."""

from __future__ import annotations

import pytest
import torch

from torch import nn

from drpo_bench.registry import FEATURES, GENERATORS

from drpo_bench.drpo.features_real import (
    LatentMAEFeatures,
    RawLatentFeatures,
    UNetTeacherFeatures,
    ViTMAEFeatures,
    gn_groups,
)
from drpo_bench.errors import MissingWeightsError, UserError
from drpo_bench.weights.tiny import tiny_mae_latent_state


def _check(features: dict[str, torch.Tensor], batch: int) -> None:
    for key, value in features.items():
        assert value.ndim == 3 and value.shape[0] == batch, key
        assert torch.isfinite(value).all(), key


def _grad_flows(x: torch.Tensor, features: dict[str, torch.Tensor]) -> bool:
    x.grad = None
    sum(v.square().mean() for v in features.values()).backward()
    return x.grad is not None and x.grad.abs().sum() > 0


def test_registered_names():
    assert RawLatentFeatures.registry_name == "latent-raw"
    assert LatentMAEFeatures.registry_name == "latent-mae"
    assert ViTMAEFeatures.registry_name == "vit-mae"
    assert UNetTeacherFeatures.registry_name == "unet-teacher"


def test_raw_latents():
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    f = RawLatentFeatures().features(x)
    assert f["latent"].shape == (2, 256, 4) and f["latent_mean_4"].shape == (2, 16, 4)
    torch.testing.assert_close(f["latent_mean"][:, 0], x.mean(dim=(2, 3)))
    _check(f, 2)
    assert _grad_flows(x, f)


def test_latent_mae_default_keys_shapes_and_grad():
    enc = FEATURES.build("latent-mae-tiny", {"keys": LatentMAEFeatures.Config().keys})
    x = torch.randn(2, 4, 32, 32, requires_grad=True)  # stage 4 at 4x4: 2x2 and 4x4 patches both tile
    f = enc.features(x)
    width4 = 8 * 2**3
    assert {k: tuple(v.shape) for k, v in f.items()} == {
        "layer4_mean": (2, 1, width4), "layer4_std": (2, 1, width4),
        "layer4_mean_2": (2, 4, width4), "layer4_std_2": (2, 4, width4),
        "layer4_mean_4": (2, 1, width4), "layer4_std_4": (2, 1, width4),
    }
    assert _grad_flows(x, f)
    assert not any(b.requires_grad for b in enc.net.buffers())
    with pytest.raises(UserError, match="latent channels"):
        enc.features(torch.randn(1, 3, 32, 32))
    with pytest.raises(UserError, match="not available"):
        FEATURES.build("latent-mae-tiny", {"keys": ("layer9_mean",)}).features(x)


class _ReferenceResNet(nn.Module):
    """An independent nn.Conv2d/nn.GroupNorm build of the same encoder, to check the functional loader."""

    def __init__(self, width: int, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(4, width, 3, padding=1, bias=False), nn.GroupNorm(gn_groups(width), width))
        self.blocks, self.norms = nn.ModuleList(), nn.ModuleList()
        cin = width
        for s, n in enumerate(layers):
            cout = width * 2**s
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                block = nn.ModuleDict({
                    "conv1": nn.Conv2d(cin, cout, 3, stride, 1, bias=False), "gn1": nn.GroupNorm(gn_groups(cout), cout),
                    "conv2": nn.Conv2d(cout, cout, 3, 1, 1, bias=False), "gn2": nn.GroupNorm(gn_groups(cout), cout),
                })
                if cin != cout or stride != 1:
                    block["proj_conv"] = nn.Conv2d(cin, cout, 1, stride, bias=False)
                    block["proj_gn"] = nn.GroupNorm(gn_groups(cout), cout)
                self.blocks.append(block)
                cin = cout
            self.norms.append(nn.GroupNorm(gn_groups(cout), cout))
        self.layers = layers

    def export(self) -> dict[str, torch.Tensor]:
        """State dict in the public JAX-exported format: kernels (kh, kw, in, out), norms scale/bias."""
        out: dict[str, torch.Tensor] = {}

        def conv(key: str, m: nn.Conv2d) -> None:
            out[f"{key}.kernel"] = m.weight.detach().permute(2, 3, 1, 0).clone()

        def norm(key: str, m: nn.GroupNorm) -> None:
            out[f"{key}.scale"], out[f"{key}.bias"] = m.weight.detach().clone(), m.bias.detach().clone()

        conv("encoder.conv1", self.stem[0])
        norm("encoder.gn1", self.stem[1])
        i = 0
        for s, n in enumerate(self.layers):
            for b in range(n):
                block = self.blocks[i]
                for name, m in block.items():
                    (conv if isinstance(m, nn.Conv2d) else norm)(f"encoder.stages_{s}.layers_{b}.{name}", m)
                i += 1
            norm(f"encoder.layer{s + 1}_norm", self.norms[s])
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.relu(self.stem(x))
        maps, i = {}, 0
        for s, n in enumerate(self.layers):
            for _ in range(n):
                blk = self.blocks[i]
                y = torch.relu(blk["gn1"](blk["conv1"](x)))
                y = blk["gn2"](blk["conv2"](y))
                x = torch.relu(y + (blk["proj_gn"](blk["proj_conv"](x)) if "proj_conv" in blk else x))
                i += 1
            x = self.norms[s](x)
            maps[f"layer{s + 1}"] = x
        return maps


def test_latent_mae_loader_matches_an_independent_module(tmp_path):
    torch.manual_seed(0)
    ref = _ReferenceResNet(8, (2, 1, 2, 1))
    for m in ref.modules():
        if isinstance(m, nn.GroupNorm):
            nn.init.normal_(m.weight, 1, 0.1)
            nn.init.normal_(m.bias, 0, 0.1)
    path = tmp_path / "mae_latent_256_torch.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.export().items()},
                "metadata": {"model_config": {"layers": [2, 1, 2, 1], "in_channels": 4}}}, path)
    enc = LatentMAEFeatures(LatentMAEFeatures.Config(checkpoint=str(path), keys=None))
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        expected, got = ref(x), enc.net(x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4)
    # torch-layout weights ("weight" keys) under "model_state_dict" load to the same network
    torch_layout = {k.replace(".kernel", ".weight"): (v.permute(3, 2, 0, 1) if k.endswith(".kernel") else v)
                    for k, v in ref.export().items()}
    torch.save({"model_state_dict": torch_layout, "metadata": {"model_config": {"layers": [2, 1, 2, 1]}}}, path)
    enc2 = LatentMAEFeatures(LatentMAEFeatures.Config(checkpoint=str(path), keys=None))
    with torch.no_grad():
        torch.testing.assert_close(enc2.net(x)["layer4"], expected["layer4"], rtol=1e-4, atol=1e-4)


def test_latent_mae_missing_checkpoint(tmp_path):
    with pytest.raises(MissingWeightsError, match="drpo-mae-latent-256"):
        LatentMAEFeatures(LatentMAEFeatures.Config(checkpoint=str(tmp_path / "none.pth")))
    torch.save({"state_dict": {"decoder.x": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="encoder.conv1"):
        LatentMAEFeatures(LatentMAEFeatures.Config(checkpoint=str(tmp_path / "bad.pth")))
    assert "state_dict" in tiny_mae_latent_state()


def test_vit_mae_no_masking_deterministic_and_differentiable():
    enc = FEATURES.build("vit-mae-tiny")
    assert enc.model.config.mask_ratio == 0.0
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    f = enc.features(x)
    assert set(f) == {"layer2_patch_mean", "layer2_patch_std", "layer2_cls"}
    _check(f, 2)
    again = enc.features(x)
    for key in f:
        torch.testing.assert_close(f[key], again[key])
    per_patch = FEATURES.build("vit-mae-tiny", {"stats": ("patch",), "layers": (1, 2)}).features(x.detach())
    assert per_patch["layer1_patch"].shape == (2, 16, 32)  # 32 px / patch 8: all 16 patches, none masked
    # patches stay in image order: the first patch changes only when the top-left corner does
    y = x.detach().clone()
    y[:, :, 24:, 24:] = 0  # bottom-right corner only
    first = FEATURES.build("vit-mae-tiny", {"stats": ("patch",), "layers": (1,)})
    a, b = first.features(x.detach())["layer1_patch"], first.features(y)["layer1_patch"]
    assert not torch.allclose(a[:, -1], b[:, -1])
    assert _grad_flows(x, f)


def test_unet_teacher_features():
    gen = GENERATORS.build("sdxl-turbo-tiny")
    enc = UNetTeacherFeatures(UNetTeacherFeatures.Config(), generator=gen)
    x = torch.randn(2, *gen.latent_shape, requires_grad=True)
    f = enc.features(x)
    assert set(f) == {"down_blocks.2", "mid_block", "up_blocks.0"}
    _check(f, 2)
    assert all(v.shape[1] == 1 for v in f.values())  # public layout: one pooled vector per sample
    with torch.no_grad():  # LoRA changes do not reach the teacher: it runs with adapters off
        for name, p in gen.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    again = enc.features(x)
    for key in f:
        torch.testing.assert_close(f[key], again[key])
    gen.unet.zero_grad()
    assert _grad_flows(x, again)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in gen.trainable_parameters())
    assert not any(m._forward_hooks for m in enc.modules.values())  # hooks live only during a call
    loc = UNetTeacherFeatures(UNetTeacherFeatures.Config(layout="locations"), generator=gen).features(x.detach())
    assert loc["up_blocks.0"].shape == (2, 4, 32)  # 8x8 map pooled 4x4 -> 2x2 locations of 32 channels
    with pytest.raises(UserError, match="needs a diffusers generator"):
        UNetTeacherFeatures(UNetTeacherFeatures.Config())


def _vit(**kw):
    return FEATURES.build("vit-mae-tiny", {"stats": ("patch", "patch_mean", "cls"), **kw})


def test_vit_mae_fresh_mask_differs_between_forwards_of_the_same_image():
    enc = _vit(mask_ratio=0.75, mask="fresh")
    assert enc.model.config.mask_ratio == 0.75
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)
    a = enc.features(x)
    assert a["layer2_patch"].shape == (2, 4, 32)  # 16 patches, int(16 * 0.25) = 4 kept
    b = enc.features(x)
    assert not torch.allclose(a["layer2_patch_mean"], b["layer2_patch_mean"])


def test_vit_mae_fixed_mask_is_reproducible_and_depends_on_its_seed():
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    enc = _vit(mask_ratio=0.75, mask="fixed", mask_seed=3)
    a, b = enc.features(x), enc.features(x)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    torch.testing.assert_close(_vit(mask_ratio=0.75, mask="fixed", mask_seed=3).features(x)["layer2_cls"],
                               a["layer2_cls"])
    other = _vit(mask_ratio=0.75, mask="fixed", mask_seed=4).features(x)
    assert not torch.allclose(other["layer2_patch_mean"], a["layer2_patch_mean"])
    assert _grad_flows(x, a)


def test_vit_mae_ratio_zero_is_the_unmasked_forward():
    """Ratio 0 (either mask mode) equals the model run on every patch in image order (the old output)."""
    from drpo_bench.rewards.clip_common import clip_preprocess

    x = torch.rand(2, 3, 64, 64)
    for mode in ("fresh", "fixed"):
        enc = _vit(mask_ratio=0.0, mask=mode)
        f = enc.features(x)
        order = torch.arange(16, dtype=torch.float32).expand(2, -1)  # argsort keeps patch order
        h = enc.model(pixel_values=clip_preprocess(x, enc.prep), noise=order, output_hidden_states=True).hidden_states[2]
        assert h.shape[1] == 17  # CLS + all 16 patches
        torch.testing.assert_close(f["layer2_patch"], h[:, 1:].float())
        torch.testing.assert_close(f["layer2_cls"], h[:, :1].float())
        torch.testing.assert_close(f["layer2_patch_mean"], enc.features(x)["layer2_patch_mean"])


def test_unet_teacher_noise_fresh_differs_fixed_reproduces():
    gen = GENERATORS.build("sdxl-turbo-tiny")
    x = torch.randn(2, *gen.latent_shape)
    fixed = UNetTeacherFeatures(UNetTeacherFeatures.Config(noise_mode="fixed"), generator=gen)
    a, b = fixed.features(x), fixed.features(x)
    fresh = UNetTeacherFeatures(UNetTeacherFeatures.Config(noise_mode="fresh"), generator=gen)
    c, d = fresh.features(x), fresh.features(x)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
        assert not torch.allclose(c[key], d[key]), key
    quiet = UNetTeacherFeatures(UNetTeacherFeatures.Config(noise_mode="fresh", noise=0.0), generator=gen)
    e, f = quiet.features(x), quiet.features(x)  # no noise: fresh and fixed agree
    for key in e:
        torch.testing.assert_close(e[key], f[key])
