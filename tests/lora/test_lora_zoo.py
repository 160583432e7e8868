"""The LoRA zoo: every published LoRA layout, built on the tiny SD1.5 / SDXL models, loaded through
``facechain.lora.load_adapter`` (the one path generation, templates, stylize, style LoRAs and
``default_style_lora`` take). Each layout either loads and applies exactly the update its authors'
tools apply (checked on the fused weights, module by module), or is one clear error naming the
file and the layout.

Layouts (key names as the tools that write them): FaceChain's trainer (diffusers < 0.21 attention
processors, ``pytorch_lora_weights.bin``), kohya sd-scripts (``lora_unet_*`` / ``lora_te_*``, with
and without text-encoder ``out_proj``; SDXL's original SGM block names and ``lora_te1_`` /
``lora_te2_``), LoCon (convolutions), LyCORIS LoHa (``hada_w1_a`` ...) and LoKr (``lokr_w1``,
``lokr_w2_a`` ...), DoRA (``dora_scale``), diffusers' ``save_lora_weights`` and a bare peft file.
"""

from __future__ import annotations

import pytest
import torch

from facechain import lora as lora_io
from facechain.errors import InputError
from facechain.io import save_safetensors

ATTN = ("to_q", "to_k", "to_v", "to_out.0")
TE = ("q_proj", "k_proj", "v_proj", "out_proj")


def _pipe(folder, family):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipes(tiny_sd15, tiny_sdxl):
    return {"sd15": (tiny_sd15, "sd15"), "sdxl": (tiny_sdxl, "sdxl")}


def _linears(model, suffixes):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(suffixes)]


def _kohya_unet_name(path: str, family: str, unet) -> str:
    if family == "sdxl":  # sd-scripts names SDXL modules by the original UNet's blocks
        up_attn = ["CrossAttn" in t for t in unet.config.up_block_types]
        path = lora_io.sgm_unet_path(path, unet.config.layers_per_block, up_attn)
    return "lora_unet_" + path.replace(".", "_")


def _text_encoders(pipe, family):
    if family == "sdxl":
        return [("lora_te1", "text_encoder", pipe.text_encoder), ("lora_te2", "text_encoder_2", pipe.text_encoder_2)]
    return [("lora_te", "text_encoder", pipe.text_encoder)]


class Zoo:
    """Builds one layout's tensors and remembers the update each module should get:
    ``expect[(component, module path)] = dW`` (or a callable of the base weight, for DoRA)."""

    def __init__(self, pipe, family, seed=0):
        self.pipe, self.family = pipe, family
        self.gen = torch.Generator().manual_seed(seed)
        self.tensors: dict[str, torch.Tensor] = {}
        self.expect: dict[tuple[str, str], object] = {}

    def rand(self, *shape, scale=0.1):
        return torch.randn(*shape, generator=self.gen) * scale

    def kohya_pair(self, name, comp, path, module, rank=4, alpha=2.0, dora=False):
        if isinstance(module, torch.nn.Conv2d):
            down = self.rand(rank, module.in_channels, *module.kernel_size)
            up = self.rand(module.out_channels, rank, 1, 1)
            delta = torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
        else:
            down, up = self.rand(rank, module.in_features), self.rand(module.out_features, rank)
            delta = up @ down
        self.tensors.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                             f"{name}.alpha": torch.tensor(alpha)})
        delta = delta * alpha / rank
        if dora:
            magnitude = torch.rand(module.out_features, 1, generator=self.gen) + 0.5
            self.tensors[f"{name}.dora_scale"] = magnitude

            def dora_weight(w, delta=delta, magnitude=magnitude):
                merged = w + delta
                return merged * (magnitude / merged.norm(dim=1, keepdim=True))

            self.expect[(comp, path)] = dora_weight
        else:
            self.expect[(comp, path)] = delta

    def kohya(self, te=True, out_proj=True, conv=False, dora=False):
        unet = self.pipe.unet
        for path, module in _linears(unet, ATTN):
            self.kohya_pair(_kohya_unet_name(path, self.family, unet), "unet", path, module, dora=dora)
        if conv:
            for path, module in unet.named_modules():
                if isinstance(module, torch.nn.Conv2d) and path.endswith(("conv1", "conv2", "proj_in", "proj_out")):
                    self.kohya_pair(_kohya_unet_name(path, self.family, unet), "unet", path, module)
        if te:
            for prefix, comp, enc in _text_encoders(self.pipe, self.family):
                for path, module in _linears(enc, TE if out_proj else TE[:3]):
                    classic = path if path.startswith("text_model.") else "text_model." + path
                    self.kohya_pair(f"{prefix}_{classic.replace('.', '_')}", comp, path, module, dora=dora)
        return self

    def loha(self, rank=2, alpha=1.0):
        for path, m in _linears(self.pipe.unet, ATTN):
            name = _kohya_unet_name(path, self.family, self.pipe.unet)
            w1a, w1b = self.rand(m.out_features, rank, scale=0.3), self.rand(rank, m.in_features, scale=0.3)
            w2a, w2b = self.rand(m.out_features, rank, scale=0.3), self.rand(rank, m.in_features, scale=0.3)
            self.tensors.update({f"{name}.hada_w1_a": w1a, f"{name}.hada_w1_b": w1b, f"{name}.hada_w2_a": w2a,
                                 f"{name}.hada_w2_b": w2b, f"{name}.alpha": torch.tensor(alpha)})
            self.expect[("unet", path)] = (w1a @ w1b) * (w2a @ w2b) * alpha / rank
        return self

    def lokr(self, rank=2, alpha=1.0):
        for path, m in _linears(self.pipe.unet, ATTN):
            name = _kohya_unet_name(path, self.family, self.pipe.unet)
            a = 4 if m.out_features % 4 == 0 else 1
            b = 4 if m.in_features % 4 == 0 else 1
            w1 = self.rand(a, b, scale=0.5)
            w2a, w2b = self.rand(m.out_features // a, rank, scale=0.3), self.rand(rank, m.in_features // b, scale=0.3)
            self.tensors.update({f"{name}.lokr_w1": w1, f"{name}.lokr_w2_a": w2a, f"{name}.lokr_w2_b": w2b,
                                 f"{name}.alpha": torch.tensor(alpha)})
            self.expect[("unet", path)] = torch.kron(w1, w2a @ w2b) * alpha / rank
        return self

    def lokr_whole(self, alpha=3.0):
        """LoKr with both Kronecker factors stored whole: applied unscaled, whatever its alpha (LyCORIS writes
        alpha = its lora_dim then)."""
        for path, m in _linears(self.pipe.unet, ATTN):
            name = _kohya_unet_name(path, self.family, self.pipe.unet)
            a = 4 if m.out_features % 4 == 0 else 1
            b = 4 if m.in_features % 4 == 0 else 1
            w1, w2 = self.rand(a, b, scale=0.5), self.rand(m.out_features // a, m.in_features // b, scale=0.1)
            self.tensors.update({f"{name}.lokr_w1": w1, f"{name}.lokr_w2": w2, f"{name}.alpha": torch.tensor(alpha)})
            self.expect[("unet", path)] = torch.kron(w1, w2)
        return self

    def facechain_bin(self, rank=4):
        """FaceChain's trainer output: ``<attn>.processor.<proj>_lora.down/up.weight``, no ``unet.`` prefix."""
        for path, m in _linears(self.pipe.unet, ATTN):
            attn, proj = path.rsplit(".", 1) if not path.endswith("to_out.0") else (path[: -len(".to_out.0")], "to_out")
            down, up = self.rand(rank, m.in_features), self.rand(m.out_features, rank)
            self.tensors[f"{attn}.processor.{proj}_lora.down.weight"] = down
            self.tensors[f"{attn}.processor.{proj}_lora.up.weight"] = up
            self.expect[("unet", path)] = up @ down
        return self

    def peft(self, prefix="", rank=4):
        for path, m in _linears(self.pipe.unet, ATTN):
            down, up = self.rand(rank, m.in_features), self.rand(m.out_features, rank)
            self.tensors[f"{prefix}{path}.lora_A.weight"] = down
            self.tensors[f"{prefix}{path}.lora_B.weight"] = up
            self.expect[("unet", path)] = up @ down
        return self


def _base_weights(pipe, expect):
    comps = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": getattr(pipe, "text_encoder_2", None)}
    return {key: comps[key[0]].get_submodule(key[1]).weight.detach().clone() for key in expect}


def _check_applied(pipe, adapter, expect, base):
    """Fuse the adapter at weight 1 and compare every module's weight with base + the expected update."""
    pipe.set_adapters([adapter], [1.0])
    pipe.fuse_lora(components=["unet", "text_encoder"] + (["text_encoder_2"] if getattr(pipe, "text_encoder_2", None) is not None else []),
                   adapter_names=[adapter], lora_scale=1.0)
    comps = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": getattr(pipe, "text_encoder_2", None)}
    for (comp, path), want in expect.items():
        module = comps[comp].get_submodule(path)
        fused = (module.base_layer if hasattr(module, "base_layer") else module).weight.detach()
        target = want(base[(comp, path)]) if callable(want) else base[(comp, path)] + want.reshape(fused.shape)
        torch.testing.assert_close(fused, target, rtol=1e-4, atol=1e-5, msg=f"{comp} {path}")


LAYOUTS = {
    "kohya": lambda z: z.kohya(),
    "kohya_te_without_out_proj": lambda z: z.kohya(out_proj=False),
    "locon": lambda z: z.kohya(te=False, conv=True),
    "loha": lambda z: z.loha(),
    "lokr": lambda z: z.lokr(),
    "lokr_whole_factors": lambda z: z.lokr_whole(),
    "dora": lambda z: z.kohya(dora=True),
    "facechain_bin": lambda z: z.facechain_bin(),
    "peft": lambda z: z.peft(),
    "peft_saved_by_peft": lambda z: z.peft(prefix="base_model.model."),
}


QUICK = {("kohya", "sd15"), ("facechain_bin", "sd15"), ("dora", "sd15"), ("loha", "sd15"), ("kohya", "sdxl")}


@pytest.mark.parametrize("layout, family", [
    pytest.param(layout, family, marks=() if (layout, family) in QUICK else pytest.mark.slow)
    for family in ("sd15", "sdxl") for layout in LAYOUTS
    if not (layout == "facechain_bin" and family == "sdxl")])  # FaceChain's attention-processor files are SD1.5 only
def test_each_layout_loads_and_applies_its_update(pipes, tmp_path, layout, family):
    folder, family = pipes[family]
    pipe = _pipe(folder, family)
    zoo = LAYOUTS[layout](Zoo(pipe, family, seed=hash(layout) % 1000))
    if layout == "facechain_bin":  # the trainer's pickle, read tensors-only
        path = tmp_path / "pytorch_lora_weights.bin"
        torch.save(zoo.tensors, path)
    else:
        path = save_safetensors(tmp_path / f"{layout}.safetensors", zoo.tensors)
    base = _base_weights(pipe, zoo.expect)
    lora_io.load_adapter(pipe, path, "face", "face LoRA")
    assert "face" in {a for names in pipe.get_list_adapters().values() for a in names}
    _check_applied(pipe, "face", zoo.expect, base)


def test_sdxl_kohya_names_are_the_original_unet_blocks(pipes):
    """One hand-written sd-scripts SDXL name: down block 1, attention 0 is ``input_blocks.4.1``."""
    folder, family = pipes["sdxl"]
    table = lora_io.kohya_names(_pipe(folder, family), family)
    assert table["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"] == (
        "unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
    assert table["lora_te2_text_model_encoder_layers_0_self_attn_out_proj"][0] == "text_encoder_2"


def test_diffusers_files_load_from_the_file_with_their_alpha(pipes, tmp_path):
    """diffusers' own file (save_lora_weights, alpha in the header's metadata) loads from the file."""
    from facechain.testing import random_lora

    folder, family = pipes["sd15"]
    out = random_lora(folder, tmp_path, seed=5)
    pipe = _pipe(folder, family)
    before = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight.detach().clone()
    lora_io.load_adapter(pipe, out / lora_io.LORA_FILE, "style", "style LoRA")
    pipe.set_adapters(["style"], [1.0])
    pipe.fuse_lora(adapter_names=["style"])
    after = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.base_layer.weight
    assert (after - before).abs().max() > 1e-4


def test_text_encoder_lora_is_written_with_the_classic_names_and_loads(pipes, tmp_path):
    """A face LoRA trained with --train_text_encoder: the diffusers file names the text encoder
    ``text_encoder.text_model.encoder...`` (what other tools read), and it loads back applying the update."""
    from safetensors.torch import load_file

    folder, family = pipes["sd15"]
    pipe = _pipe(folder, family)
    zoo = Zoo(pipe, family, seed=7)
    lora: lora_io.LoraDict = {"unet": {}, "text_encoder": {}}
    for path, m in _linears(pipe.text_encoder, TE):
        down, up = zoo.rand(4, m.in_features), zoo.rand(m.out_features, 4)
        lora["text_encoder"][f"{path}.lora_A.weight"], lora["text_encoder"][f"{path}.lora_B.weight"] = down, up
        zoo.expect[("text_encoder", path)] = up @ down * 2.0  # alpha 8 / rank 4
    for path, m in _linears(pipe.unet, ATTN)[:4]:
        down, up = zoo.rand(4, m.in_features), zoo.rand(m.out_features, 4)
        lora["unet"][f"{path}.lora_A.weight"], lora["unet"][f"{path}.lora_B.weight"] = down, up
        zoo.expect[("unet", path)] = up @ down * 2.0
    file = lora_io.save_diffusers(tmp_path, lora, family, rank=4, alpha=8.0)
    te_keys = [k for k in load_file(str(file)) if k.startswith("text_encoder.")]
    assert te_keys and all(k.startswith("text_encoder.text_model.encoder.") for k in te_keys)
    base = _base_weights(pipe, zoo.expect)
    lora_io.load_adapter(pipe, file, "face", "face LoRA")
    _check_applied(pipe, "face", zoo.expect, base)
    # and the trainer's reader (init LoRA) reads it back to the model's own names
    back, scale = lora_io.read_lora_file(file, family)
    assert scale == 1.0 and {k.removeprefix("text_model.") for k in back["text_encoder"]} == set(lora["text_encoder"])


def test_a_lora_of_another_family_is_one_clear_error(pipes, tmp_path):
    sdxl_folder, _ = pipes["sdxl"]
    sdxl_zoo = Zoo(_pipe(sdxl_folder, "sdxl"), "sdxl").kohya(te=False)
    path = save_safetensors(tmp_path / "sdxl_style.safetensors", sdxl_zoo.tensors)
    folder, family = pipes["sd15"]
    pipe = _pipe(folder, family)
    with pytest.raises(InputError, match=r"sdxl_style\.safetensors.*name no layer of this sd15 model.*another model family"):
        lora_io.load_adapter(pipe, path, "style", "style LoRA")
    assert not pipe.get_list_adapters()


def test_a_diffusers_file_of_another_model_is_one_clear_error(pipes, tmp_path):
    """A diffusers-layout file whose modules the model lacks: one error naming the file and its layout,
    never a later failure in set_adapters."""
    folder, family = pipes["sd15"]
    pipe = _pipe(folder, family)
    bogus = {"unet.no_such_block.to_q.lora_A.weight": torch.zeros(4, 16),
             "unet.no_such_block.to_q.lora_B.weight": torch.zeros(16, 4)}
    path = save_safetensors(tmp_path / "other.safetensors", bogus)
    with pytest.raises(InputError, match=r"other\.safetensors \(style, diffusers layout\)"):
        lora_io.load_adapter(pipe, path, "style", "style LoRA")


@pytest.mark.parametrize("part, words", [("lora_mid.weight", "Tucker middle factor"), ("hada_t1", "Tucker")])
def test_tucker_decomposed_lycoris_is_refused_by_name(pipes, tmp_path, part, words):
    folder, family = pipes["sd15"]
    pipe = _pipe(folder, family)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{name}.lora_down.weight": torch.zeros(4, 16), f"{name}.lora_up.weight": torch.zeros(16, 4),
               f"{name}.{part}": torch.zeros(4, 4, 3, 3)}
    if part == "hada_t1":
        tensors = {f"{name}.hada_w1_a": torch.zeros(16, 2), f"{name}.hada_w1_b": torch.zeros(2, 16),
                   f"{name}.hada_w2_a": torch.zeros(16, 2), f"{name}.hada_w2_b": torch.zeros(2, 16),
                   f"{name}.hada_t1": torch.zeros(2, 2, 3, 3)}
    path = save_safetensors(tmp_path / "tucker.safetensors", tensors)
    with pytest.raises(InputError, match=rf"tucker\.safetensors: module {name}.*{words}"):
        lora_io.load_adapter(pipe, path, "style", "style LoRA")


def test_a_file_only_partly_applied_is_refused(pipes, tmp_path):
    """A diffusers file with one module the model lacks beside real ones: diffusers would load the rest
    and warn; facechain refuses the file (part of a LoRA gives another look) and leaves no adapter."""
    from safetensors.torch import load_file

    from facechain.testing import random_lora

    folder, family = pipes["sd15"]
    tensors = load_file(str(random_lora(folder, tmp_path, seed=9) / lora_io.LORA_FILE))
    tensors["unet.no_such_block.to_q.lora_A.weight"] = torch.zeros(4, 16)
    tensors["unet.no_such_block.to_q.lora_B.weight"] = torch.zeros(16, 4)
    path = save_safetensors(tmp_path / "partly.safetensors", tensors)
    pipe = _pipe(folder, family)
    with pytest.raises(InputError, match=r"partly\.safetensors"):
        lora_io.load_adapter(pipe, path, "style", "style LoRA")
    assert not pipe.get_list_adapters()


@pytest.mark.slow
def test_generation_with_facechains_face_lora_and_a_kohya_style(pipes, tmp_path):
    """The break a first real user hit: FaceChain's trainer output (``pytorch_lora_weights.bin``,
    attention-processor keys) as the face LoRA, a kohya style LoRA in a style file: both reach the
    UNet, and each changes the image."""
    import json

    import numpy as np

    from facechain.generate import GenerateConfig
    from facechain.generate.pipeline import PortraitGenerator
    from facechain.generate.styles import load_styles

    folder, family = pipes["sd15"]
    pipe = _pipe(folder, family)
    lora_dir = tmp_path / "facechain_lora"
    lora_dir.mkdir()
    torch.save(Zoo(pipe, family, seed=11).facechain_bin().tensors, lora_dir / "pytorch_lora_weights.bin")
    styles = tmp_path / "styles"
    save_safetensors(styles / "kohya_ink.safetensors", Zoo(pipe, family, seed=12).kohya(te=False).tensors)
    (styles / "ink.json").write_text(json.dumps({
        "name": "Kohya ink", "img": "", "model_id": "kohya_ink.safetensors", "revision": None, "bin_file": None,
        "multiplier_style": 0.5, "multiplier_human": 0.9, "add_prompt_style": "ink drawing"}))
    style = load_styles([styles]).get("Kohya ink", family)

    def images(**kw):
        cfg = GenerateConfig(**{**{"base_model": str(folder), "output_dir": tmp_path / "out", "num_candidates": 1, "num_images": 1,
                                       "num_inference_steps": 2, "rank_candidates": False, "fusion": "off", "device": "cpu",
                                       "dtype": "float32", "styles": ["Kohya ink"], "style_dirs": [styles]}, **kw})
        batch = PortraitGenerator(cfg).generate(style, ("a person", ""))
        return batch, np.asarray(batch.candidates[0].image, dtype=np.int16)

    batch, with_both = images(lora_dir=lora_dir, lora_file="pytorch_lora_weights.bin", allow_pickle=True)
    assert batch.adapters == {"face": 0.9, "style": 0.5}
    _, style_only = images()
    assert np.abs(with_both - style_only).mean() > 1.0
