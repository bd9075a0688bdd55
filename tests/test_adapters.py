"""Usable LoRAs: diffusers-format adapter files, `drpo-bench sample`, the `adapter` evaluation row."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from drpo_bench.commands.main import main
from drpo_bench.errors import UserError
from drpo_bench.generators.base import resolve_adapter_file
from drpo_bench.registry import GENERATORS
from drpo_bench.store import save_safetensors
from drpo_bench.weights.tiny import make_tiny_sd_turbo, make_tiny_sdxl_turbo

PROMPTS = ["a photo of a red cat", "two dogs on a beach"]


def _perturb_lora(g, seed=1, scale=0.05):
    """Random LoRA B matrices: the adapter now changes the UNet (B = 0 at init changes nothing)."""
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for name, p in g.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def _same_adapter(a, b) -> bool:
    sa, sb = a.adapter_state_dict(), b.adapter_state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def _unet_out(unet, x, t, cond, **kwargs):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=cond, return_dict=False, **kwargs)[0]


# ---- diffusers' LoRA format --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd_adapter(tmp_path_factory):
    """A tiny SD-Turbo generator with rank 4, alpha 8 (scale 2: alpha must come from the file) and a
    perturbed LoRA, saved to adapter.safetensors."""
    g = GENERATORS.build("sd-turbo-tiny", {"lora_rank": 4, "lora_alpha": 8})
    _perturb_lora(g)
    path = tmp_path_factory.mktemp("sd") / "adapter.safetensors"
    g.save_adapter(path)
    return g, path


def test_saved_adapter_has_diffusers_keys_and_lora_config(sd_adapter):
    g, path = sd_adapter
    with safe_open(str(path), framework="pt") as f:
        keys, header = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("unet.") and (".lora.down." in k or ".lora.up." in k) for k in keys)
    assert len(keys) == len(g.adapter_state_dict())
    meta = json.loads(header["lora_adapter_metadata"])
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 8
    assert sorted(meta["unet.target_modules"]) == sorted(g.config.lora_targets)
    assert [p.name for p in path.parent.iterdir()] == ["adapter.safetensors"]  # no temporary folder left


def test_save_adapter_replaces_atomically_and_clears_stale_temporaries(sd_adapter, tmp_path):
    g, _ = sd_adapter
    target = tmp_path / "adapter.safetensors"
    target.write_bytes(b"old")
    (tmp_path / ".adapter.safetensors.abc123.lora-tmp").mkdir()  # a save killed midway
    g.save_adapter(target)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.safetensors"]
    fresh = GENERATORS.build("sd-turbo-tiny", {"lora_rank": 4, "lora_alpha": 8})
    fresh.load_adapter(target)
    assert _same_adapter(fresh, g)


def test_stable_diffusion_pipeline_loads_the_adapter(sd_adapter):
    from diffusers import StableDiffusionPipeline

    g, path = sd_adapter
    pipe = StableDiffusionPipeline.from_pretrained(str(make_tiny_sd_turbo()), safety_checker=None, local_files_only=True)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))  # (B, 4, h, w)
    t = torch.full((2,), 999.0)
    cond = g.encode(PROMPTS)["prompt_embeds"]  # (B, 77, D)
    base = _unet_out(pipe.unet, x, t, cond)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    loaded = _unet_out(pipe.unet, x, t, cond)
    ours = _unet_out(g.unet, x, t, cond)
    with g.reference():
        ours_base = _unet_out(g.unet, x, t, cond)
    torch.testing.assert_close(base, ours_base)  # same weights before the LoRA
    assert (loaded - base).abs().max() > 1e-3  # the LoRA changes the pipeline's UNet
    torch.testing.assert_close(loaded, ours, atol=1e-5, rtol=1e-5)  # exactly as it changes ours


def test_stable_diffusion_xl_pipeline_loads_the_adapter(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    g = GENERATORS.build("sdxl-turbo-tiny")
    _perturb_lora(g, seed=2)
    g.save_adapter(tmp_path / "adapter.safetensors")
    pipe = StableDiffusionXLPipeline.from_pretrained(str(make_tiny_sdxl_turbo()), local_files_only=True)
    cond = g.encode(PROMPTS)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 999.0)
    kwargs = g._unet_kwargs(cond)
    base = _unet_out(pipe.unet, x, t, cond["prompt_embeds"], **kwargs)
    pipe.load_lora_weights(str(tmp_path), weight_name="adapter.safetensors")
    loaded = _unet_out(pipe.unet, x, t, cond["prompt_embeds"], **kwargs)
    assert (loaded - base).abs().max() > 1e-3
    torch.testing.assert_close(loaded, _unet_out(g.unet, x, t, cond["prompt_embeds"], **kwargs), atol=1e-5, rtol=1e-5)


def test_load_adapter_reads_new_and_old_formats(sd_adapter, tmp_path):
    g, path = sd_adapter
    cfg = GENERATORS.get("sd-turbo-tiny").parse_config({"lora_rank": 4, "lora_alpha": 8})
    fresh = GENERATORS.get("sd-turbo-tiny").cls(cfg)
    assert not _same_adapter(fresh, g)
    fresh.load_adapter(path)  # diffusers format, this version's adapter.safetensors
    assert _same_adapter(fresh, g)
    old = tmp_path / "old.safetensors"  # the layout earlier runs and every checkpoint-*/ hold
    save_safetensors({k: v.detach().cpu().contiguous() for k, v in g.adapter_state_dict().items()}, old)
    other = GENERATORS.get("sd-turbo-tiny").cls(cfg)
    other.load_adapter(old)
    assert _same_adapter(other, g)
    peft_dir = tmp_path / "unet_lora"  # peft save_pretrained: base_model.model. prefix + adapter_config.json
    peft_dir.mkdir()
    save_safetensors({f"base_model.model.{k}": v.detach().cpu().contiguous() for k, v in g.adapter_state_dict().items()},
                     peft_dir / "adapter_model.safetensors")
    (peft_dir / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": list(cfg.lora_targets)}))
    third = GENERATORS.get("sd-turbo-tiny").cls(cfg)
    third.load_adapter(tmp_path)  # the folder above unet_lora/, as the public DrPO checkpoints are laid out
    assert _same_adapter(third, g)


def test_load_adapter_names_the_args_to_set(sd_adapter):
    _, path = sd_adapter
    with pytest.raises(UserError, match=r"lora_rank: 4, lora_alpha: 8.*Set the generator's args"):
        GENERATORS.build("sd-turbo-tiny").load_adapter(path)  # r 16, alpha 16
    with pytest.raises(UserError, match=r"lora_alpha: 8"):
        GENERATORS.build("sd-turbo-tiny", {"lora_rank": 4, "lora_alpha": 4}).load_adapter(path)


def test_resolve_adapter_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_adapter_file(tmp_path / "nope")
    with pytest.raises(UserError, match="without an adapter file"):
        resolve_adapter_file(tmp_path)
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    assert resolve_adapter_file(tmp_path) == tmp_path / "adapter.safetensors"


def test_sample_cli_on_the_tiny_sd_turbo_twin(sd_adapter, tmp_path, capsys):
    _, path = sd_adapter
    sets = ["--set", "lora_rank=4", "--set", "lora_alpha=8"]
    args = ["sample", "--generator", "sd-turbo-tiny", *sets, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--n", "2"]
    assert main([*args, "--adapter", str(path), "--out", str(tmp_path / "lora.png")]) == 0
    assert main([*args, "--out", str(tmp_path / "base.png")]) == 0
    lora, base = Image.open(tmp_path / "lora.png"), Image.open(tmp_path / "base.png")
    # 64 px images upscaled x2 for viewing, 2 padding: 2 rows x 2 columns, a prompt band above each row
    from drpo_bench.run.evaluation import LABEL_PX

    assert lora.size == base.size == (2 * 128 + 3 * 2, 2 * 128 + 3 * 2 + 2 * LABEL_PX)
    assert lora.tobytes() != base.tobytes()
    assert main(["sample", "--adapter", str(path), "--prompt", "x"]) == 2  # a bare file: which generator?
    assert "--generator" in capsys.readouterr().err


# ---- the toy world: train a cell, reload it as an `adapter` row, sample from it -------------------

TOY_SUITE = """\
name: {name}
generators: [toy]
rewards:
  redness: toy-redness
prompts: toy
train_rewards: [redness]
methods:
{methods}
seeds: [0]
budget: {{steps: 4, candidates_per_prompt: 8, prompts_per_update: 4, micro_batch_prompts: 2}}
train: {{lr: 0.01, checkpoint_every: 2}}
eval:
  images_per_prompt: 4
  metrics: [redness, {{name: diversity, args: {{features: toy-pixels}}}}]
  grid_prompts: 2
"""


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    trained = root / "trained"
    (root / "train.yaml").write_text(TOY_SUITE.format(
        name="adapters-train", methods="  - {id: drpo, method: drpo, args: {n_pos: 2, n_neg: 2, features: toy-pixels}}"))
    assert main(["run", str(root / "train.yaml"), "--output", str(trained), "--quiet"]) == 0
    cell = trained / "toy--drpo--redness--s0"
    (root / "reload.yaml").write_text(TOY_SUITE.format(
        name="adapters-reload", methods=f"  - {{id: base, method: base}}\n  - {{id: reloaded, method: adapter, args: {{path: {cell}}}}}"))
    assert main(["run", str(root / "reload.yaml"), "--output", str(root / "reloaded"), "--quiet"]) == 0
    return root, cell


def test_adapter_row_evaluates_like_the_trained_cell(toy_runs):
    root, cell = toy_runs
    trained = json.loads((cell / "eval.json").read_text())
    reloaded = json.loads((root / "reloaded" / "toy--reloaded--none--s0" / "eval.json").read_text())
    base = json.loads((root / "reloaded" / "toy--base--none--s0" / "eval.json").read_text())
    assert reloaded == trained
    assert base["metrics"]["redness"]["mean"] != trained["metrics"]["redness"]["mean"]  # the adapter did something
    record = json.loads((root / "reloaded" / "toy--reloaded--none--s0" / "cell.json").read_text())
    assert record["trains"] is False and record["method"]["args"]["path"] == str(cell)


def test_adapter_row_with_a_missing_path_fails_validation(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(TOY_SUITE.format(
        name="adapters-bad", methods=f"  - {{id: reloaded, method: adapter, args: {{path: {tmp_path / 'nope'}}}}}"))
    assert main(["validate", str(tmp_path / "s.yaml")]) != 0
    err = capsys.readouterr().err
    assert "methods[0].args.path" in err and "does not exist" in err


def test_sample_cli_from_a_toy_cell(toy_runs, tmp_path):
    from drpo_bench.commands.sample import load_for_sampling, sample_images

    root, cell = toy_runs
    out = tmp_path / "grid.png"
    assert main(["sample", "--adapter", str(cell), "--prompt", "a red square", "--prompt", "blue", "--n", "3",
                 "--seed", "5", "--out", str(out)]) == 0
    assert out.is_file()
    from drpo_bench.run.evaluation import LABEL_PX

    with Image.open(out) as grid:  # each prompt row has its text band above it: dark text on white
        rows = 2
        tile = (grid.height - rows * LABEL_PX - 2) // rows  # image + padding
        for r in range(rows):
            band = grid.convert("L").crop((0, r * (tile + LABEL_PX), grid.width, r * (tile + LABEL_PX) + LABEL_PX))
            assert band.getextrema()[0] < 80 and band.getextrema()[1] == 255, f"row {r} has a label"
    gen, _ = load_for_sampling(str(cell / "adapter.safetensors"), None, {})  # a file inside a cell folder works too
    base, _ = load_for_sampling(str(root / "reloaded" / "toy--reloaded--none--s0"), None, {})  # an adapter row: its LoRA
    a, b = sample_images(gen, ["a red square"], 3, 5), sample_images(base, ["a red square"], 3, 5)
    torch.testing.assert_close(a, b)
    with pytest.raises(UserError, match="trained no adapter"):
        load_for_sampling(str(root / "reloaded" / "toy--base--none--s0"), None, {})
