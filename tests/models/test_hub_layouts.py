"""Every repository the code names by default, against its published file listing (tests/fixtures/
hub_listings.json, recorded from the model pages and FaceChain's code): each default resolves to files that
exist there in an allowed format, a download asks for nothing but the files that load (a simulated hub built
from the listing: empty files of the listed names behind the hub clients' file-level API), and the ModelScope
copies are tried after the hub with one error naming every place tried."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from facechain import models
from facechain.errors import InputError, ModelNotFoundError, UnsafeCheckpointError

pytestmark = pytest.mark.unit  # model-free

LISTINGS = json.loads((Path(__file__).parents[1] / "fixtures" / "hub_listings.json").read_text())["repos"]
BY_REPO = {(r["repo"], r["hub"]): r for r in LISTINGS}
# Listings whose weight files nobody has seen (ModelScope-only repos named by FaceChain's code): the loaders
# take safetensors from them, else refuse naming --allow-pickle. A new default must not join this set silently.
WEIGHTS_UNKNOWN = {"ly261666/cv_portrait_model", "damo/face_chain_control_model", "ly261666/cv_wanx_style_model"}


def listing(repo: str, hub: str | None = None) -> dict:
    hits = [r for (name, h), r in BY_REPO.items() if name == repo and (hub is None or h == hub)]
    assert hits, f"{repo} ({hub or 'any hub'}) is named by the code and missing from tests/fixtures/hub_listings.json"
    return hits[0]


def files_of(repo: str, hub: str | None = None) -> list[str]:
    return sorted(listing(repo, hub)["files"])


def weights(paths) -> list[str]:
    return [p for p in paths if models.weight_file_kind(p)]


# --------------------------------------------------------------------------- the fixture itself


def test_fixture_records_format_variant_and_source():
    for r in LISTINGS:
        assert r["hub"] in ("huggingface", "modelscope") and r["source"] and isinstance(r["confirmed"], bool), r["repo"]
        if not r["confirmed"]:
            assert r.get("note"), f"{r['repo']}: an unconfirmed listing says what is not known"
        for name, kind in r["files"].items():
            fmt = ("safetensors" if name.endswith(".safetensors") else
                   "pickle" if name.lower().endswith(models.PICKLE_SUFFIXES) else "other")
            variant = (models.weight_file_kind(name) or (None, None))[1]
            assert kind == fmt + (f" {variant}" if variant else ""), (r["repo"], name, kind)


# --------------------------------------------------------------------------- every default resolves


def _controlnet_defaults() -> dict[str, str]:
    from facechain.families import default_controlnets

    DEFAULT_OPENPOSE_CONTROLNET, DEFAULT_CANNY_CONTROLNET, DEFAULT_DEPTH_CONTROLNET = (
        default_controlnets(kind) for kind in ("openpose", "canny", "depth"))

    return {f"{what} {fam}": ref for what, table in (("openpose", DEFAULT_OPENPOSE_CONTROLNET),
                                                    ("canny", DEFAULT_CANNY_CONTROLNET), ("depth", DEFAULT_DEPTH_CONTROLNET))
            for fam, ref in table.items()}


@pytest.mark.parametrize("half", [True, False])
def test_every_default_controlnet_loads_safetensors(half):
    """Each default ControlNet (and its ModelScope copies, where their files are known) plans only
    diffusers-named safetensors: the SDXL openpose default no longer points at a pickle-only repo."""
    for label, ref in _controlnet_defaults().items():
        repo, _, path = models.parse_hub_ref(ref)
        plan = models.download_plan(files_of(repo, "huggingface"), path, kind="controlnet", where=label, half=half)
        assert "config.json" in plan and weights(plan), (label, plan)
        assert all(models.weight_file_kind(w)[0] == "safetensors" for w in weights(plan)), (label, plan)
        assert all(models.weight_file_kind(w)[1] == ("fp16" if half else None) or
                   not any(models.weight_file_kind(f) == ("safetensors", "fp16" if half else None)
                           for f in files_of(repo, "huggingface")) for w in weights(plan)), (label, plan)


def test_thibaud_sdxl_openpose_is_pickle_only_and_its_single_file_is_named():
    files = files_of("thibaud/controlnet-openpose-sdxl-1.0")
    with pytest.raises(UnsafeCheckpointError, match=r"(?s)only as pickle files \(diffusion_pytorch_model.bin\).*"
                                                    r"--allow-pickle.*OpenPoseXL2.safetensors"):
        models.download_plan(files, "", kind="controlnet", where="openpose ControlNet")
    assert models.download_plan(files, "OpenPoseXL2.safetensors", kind="controlnet", where="openpose") == [
        "OpenPoseXL2.safetensors", "config.json"]


def test_modelscope_copies_are_faceChains_and_listed():
    for hub_ref, copies in models.MODELSCOPE_COPIES.items():
        listing(models.parse_hub_ref(hub_ref)[0], "huggingface")
        for copy in copies:
            repo, revision, path = models.parse_hub_ref(copy)
            entry = listing(repo, "modelscope")
            assert entry["revision"] == revision, copy
            assert any(f == path or f.startswith(path + "/") for f in entry["files"]) or not path, copy
    from facechain.families import fast_loras

    LCM_LORAS = fast_loras()
    for fam, ref in LCM_LORAS.items():
        sources = [str(s) for s in models.hub_sources(ref, path="pytorch_lora_weights.safetensors")]
        assert sources[0].startswith("huggingface: ") and sources[-1].startswith("modelscope: ") and len(sources) == 3, sources


@pytest.mark.parametrize("half", [True, False])
def test_default_base_models_download_only_what_loads(half):
    """The reference repos (stylize's default base, the single-file config repos): model_index.json, and of
    the loaded components their configs and one set of safetensors weights; never the safety checker or the
    feature extractor, never the root's single-file checkpoints, fp16 files exactly when running in float16."""
    from facechain.families import reference_repos
    from facechain.stylize.config import DEFAULT_MODEL

    for repo in sorted({DEFAULT_MODEL, *reference_repos().values()}):
        files = files_of(repo, "huggingface")
        folders = {f.split("/", 1)[0] for f in files if "/" in f}
        plan = models.download_plan(files, "", kind="pipeline", where=repo, half=half,
                                    model_index={c: ["lib", "Class"] for c in folders})
        assert not [p for p in plan if p.startswith(("safety_checker/", "feature_extractor/")) or "/" not in p
                    and p != "model_index.json"], plan
        got = {p.split("/")[0]: models.weight_file_kind(p) for p in weights(plan)}
        assert set(got) >= {"unet", "vae", "text_encoder"}, plan
        assert set(got.values()) == {("safetensors", "fp16" if half else None)}, plan


def test_default_loras_resolve():
    """LCM-LoRAs, FaceChain's style LoRA and the style files' LoRAs: the named file is in the listing and is
    .safetensors."""
    from facechain.generate.config import FACECHAIN_STYLE_LORA
    from facechain.families import fast_loras
    from facechain.lora import LORA_FILE

    LCM_LORAS = fast_loras()
    from facechain.generate.styles import load_styles

    named = [(ref, None, LORA_FILE) for ref in LCM_LORAS.values()] + [FACECHAIN_STYLE_LORA]
    for style in load_styles():
        if style.has_lora and style.lora_reference() == style.model_id:  # a hub LoRA, not a file beside the style
            named.append((style.model_id, style.revision, style.bin_file))
    assert len(named) > 4
    for repo, revision, name in named:
        entry = listing(repo)
        assert name in entry["files"] and entry["files"][name] == "safetensors", (repo, name)
        assert entry["revision"] in (revision, None, "main"), (repo, revision)


def test_facechain_face_lora_default_resolves():
    from facechain.train.config import FACECHAIN_FACE_LORA

    repo, revision, name = FACECHAIN_FACE_LORA
    entry = listing(repo, "modelscope")
    assert name in entry["files"] and revision == entry["revision"]


def test_pickle_only_defaults_say_allow_pickle(tmp_path):
    """Defaults published only as pickles load only where the code asks for allow_pickle and says so: the
    OpenPose annotator, FaceChain's FaceID checkpoints (converted once, tensors-only), and FeedFace's default
    CLIP encoder (pickle-only on main: its safetensors copy sits in an unmerged bot PR)."""
    from facechain.adapters import ip_adapter_faceid as faceid
    from facechain.adapters.feedface.train import DEFAULT_IMAGE_ENCODER as FEEDFACE_ENCODER
    from facechain.generate.config import GenerateConfig

    annotator = {f.name: f.default for f in dataclasses.fields(GenerateConfig)}["pose_annotator"]
    assert {"body_pose_model.pth", "hand_pose_model.pth"} <= set(files_of(annotator))
    with pytest.raises(UnsafeCheckpointError, match="--allow-pickle"):
        models.load_pose_annotator(annotator, allow_pickle=False, needed_for="a pose photo", instead="pass a skeleton map")
    for name in faceid.CHECKPOINTS.values():
        assert listing(faceid.FACEID_REPO)["files"][name] == "pickle", name
    with pytest.raises(ModelNotFoundError, match="facechain convert h94/IP-Adapter-FaceID --file ip-adapter-faceid_sd15.bin"):
        faceid.resolve_weights("ip-adapter-faceid", "sd15")
    with pytest.raises(UnsafeCheckpointError, match="only as pickle files \\(pytorch_model.bin\\).*--allow-pickle"):
        models.download_plan(files_of(FEEDFACE_ENCODER), "", kind="model", where=FEEDFACE_ENCODER)


def test_default_image_encoder_and_depth_estimator_resolve():
    from facechain.adapters.ip_adapter_faceid import DEFAULT_IMAGE_ENCODER
    from facechain.generate.config import GenerateConfig

    depth = {f.name: f.default for f in dataclasses.fields(GenerateConfig)}["depth_estimator"]
    for repo, sub in (DEFAULT_IMAGE_ENCODER, (depth, "")):
        plan = models.download_plan(files_of(repo), sub, kind="model", where=repo, half=True)
        prefix = f"{sub}/" if sub else ""
        assert weights(plan) == [f"{prefix}model.safetensors"] and f"{prefix}config.json" in plan, plan


def test_unknown_weight_listings_are_only_the_known_modelscope_ones():
    from facechain.server.service import ServeConfig

    unknown = {r["repo"] for r in LISTINGS if not r["confirmed"] and not weights(r["files"])
               and "safetensors" not in r["files"].values()}
    assert unknown == WEIGHTS_UNKNOWN
    base = {f.name: f.default for f in dataclasses.fields(ServeConfig)}
    entry = listing(base["base_model"], "modelscope")
    assert any(f.startswith(base["sub_path"] + "/") for f in entry["files"]) and not entry["confirmed"]


# --------------------------------------------------------------------------- a simulated hub


class FakeHub:
    """The file-level API of the Hugging Face hub and ModelScope over folders of empty files named as a
    listing: records what each download asked for."""

    def __init__(self, root: Path, monkeypatch, available: dict[tuple[str, str], dict]):
        import importlib

        import huggingface_hub

        ms_api, ms_file, ms_snapshot = (importlib.import_module(f"modelscope.hub.{m}")
                                        for m in ("api", "file_download", "snapshot_download"))
        self.root, self.available, self.calls = root, available, []
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(models.hub, "_reachable", lambda url, timeout=3.0: True)
        monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo, revision=None: self._files("huggingface", repo))
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, revision=None, local_files_only=False:
                            self._one("huggingface", repo, name))
        monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, revision=None, allow_patterns=None,
                            local_files_only=False: self._snapshot("huggingface", repo, allow_patterns))
        monkeypatch.setattr(ms_api.HubApi, "get_model_files", lambda _self, repo, revision=None, recursive=True:
                            [{"Path": f, "Type": "blob"} for f in self._files("modelscope", repo)])
        monkeypatch.setattr(ms_snapshot, "snapshot_download",
                            lambda repo, revision=None, allow_patterns=None: self._snapshot("modelscope", repo, allow_patterns))
        monkeypatch.setattr(ms_file, "model_file_download",
                            lambda repo, name, revision=None: self._one("modelscope", repo, name))

    def _files(self, hub: str, repo: str) -> list[str]:
        self.calls.append(("list", hub, repo))
        return self._listing(hub, repo)

    def _listing(self, hub: str, repo: str) -> list[str]:
        if (repo, hub) not in self.available:
            raise FileNotFoundError(f"{repo} is not on {hub}")
        return sorted(self.available[(repo, hub)])

    def _write(self, hub: str, repo: str, names) -> Path:
        folder = self.root / hub / repo.replace("/", "--")
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(self.available[(repo, hub)].get(name) or "{}")
        return folder

    def _one(self, hub: str, repo: str, name: str) -> str:
        if name not in self._listing(hub, repo):
            raise FileNotFoundError(f"{repo}/{name} is not on {hub}")
        self.calls.append(("file", hub, repo, name))
        return str(self._write(hub, repo, [name]) / name)

    def _snapshot(self, hub: str, repo: str, patterns) -> str:
        files = self._listing(hub, repo)
        assert patterns is not None, "a download without allow_patterns fetches the whole repo"
        self.calls.append(("snapshot", hub, repo, sorted(patterns)))
        return str(self._write(hub, repo, [f for f in files if f in patterns]))

    def fetched(self) -> list[str]:
        return [p for c in self.calls if c[0] == "snapshot" for p in c[3]]


def _with_contents(repo: str, hub: str, contents: dict[str, str]) -> dict:
    return {name: contents.get(name, "") for name in listing(repo, hub)["files"]}


def test_base_model_download_takes_only_the_loaded_components(tmp_path, monkeypatch):
    import torch

    repo = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    index = {"_class_name": "StableDiffusionPipeline", "feature_extractor": ["transformers", "CLIPImageProcessor"],
             "image_encoder": [None, None], "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
             "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    hub = FakeHub(tmp_path, monkeypatch, {(repo, "huggingface"): _with_contents(repo, "huggingface", {
        "model_index.json": json.dumps(index), "unet/config.json": json.dumps({"in_channels": 4, "_class_name": "UNet2DConditionModel"})})})
    resolved = models.resolve_model(repo, dtype=torch.float16)
    assert resolved.family == "sd15" and resolved.format == "diffusers"
    got = hub.fetched()
    assert list(weights(got)) == ["text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                                         "vae/diffusion_pytorch_model.fp16.safetensors"]
    assert not [p for p in got if p.startswith(("safety_checker", "feature_extractor"))]
    assert {"model_index.json", "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json"} <= set(got)
    hub.calls.clear()
    models.resolve_model(repo, dtype=torch.float32)
    assert weights(hub.fetched()) == ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                                      "vae/diffusion_pytorch_model.safetensors"]


def test_sdxl_fp16_download_is_the_fp16_files(tmp_path, monkeypatch):
    import torch

    repo = "stabilityai/stable-diffusion-xl-base-1.0"
    index = {c: ["diffusers", "X"] for c in ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae")}
    hub = FakeHub(tmp_path, monkeypatch, {(repo, "huggingface"): _with_contents(repo, "huggingface", {
        "model_index.json": json.dumps(index), "unet/config.json": json.dumps({"addition_embed_type": "text_time"})})})
    assert models.resolve_model(repo, dtype=torch.float16).family == "sdxl"
    got = weights(hub.fetched())
    assert got == [f"{c}/{stem}.fp16.safetensors" for c, stem in (("text_encoder", "model"), ("text_encoder_2", "model"),
                                                                   ("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"))]
    assert not [p for p in hub.fetched() if p.startswith("vae_1_0/") or p.startswith("sd_xl_")]  # not in model_index


def test_controlnet_copy_is_tried_after_both_hubs(tmp_path, monkeypatch):
    """The SD1.5 openpose default is on neither hub here; FaceChain's ModelScope copy (a sub-folder of
    damo/face_chain_control_model v1.0.1) is tried third. Without it, one error names all three places."""
    import torch

    from facechain.models import load_controlnet

    copy = "damo/face_chain_control_model"
    sub = "model_controlnet/control_v11p_sd15_openpose"
    hub = FakeHub(tmp_path, monkeypatch, {(copy, "modelscope"): {f"{sub}/config.json": "{}",
                                                                   f"{sub}/diffusion_pytorch_model.bin": ""}})
    with pytest.raises(UnsafeCheckpointError, match=r"(?s)only as pickle files.*--allow-pickle.*tried: huggingface: "
                       r"lllyasviel/control_v11p_sd15_openpose.*tried: modelscope: lllyasviel.*tried: modelscope: "
                       r"damo/face_chain_control_model@v1.0.1/model_controlnet/control_v11p_sd15_openpose"):
        load_controlnet("lllyasviel/control_v11p_sd15_openpose", dtype=torch.float32, what="openpose")
    assert [c[1:3] for c in hub.calls if c[0] == "list"] == [("huggingface", "lllyasviel/control_v11p_sd15_openpose"),
                                                             ("modelscope", "lllyasviel/control_v11p_sd15_openpose"),
                                                             ("modelscope", copy)]
    hub.available.clear()
    with pytest.raises(ModelNotFoundError, match=r"(?s)openpose ControlNet .* could not be found.*tried: .*tried: .*tried: "
                       r"modelscope: damo/face_chain_control_model@v1.0.1.*controlnet_openpose"):
        load_controlnet("lllyasviel/control_v11p_sd15_openpose", dtype=torch.float32, what="openpose")


def test_lcm_lora_falls_back_to_faceChains_modelscope_copy(tmp_path, monkeypatch):
    from facechain import lora as lora_io
    from facechain.families import fast_loras

    copy = "eavesy/lcm-lora-sdv1-5"
    hub = FakeHub(tmp_path, monkeypatch, {(copy, "modelscope"): _with_contents(copy, "modelscope", {})})
    path = lora_io.resolve(fast_loras()["sd15"], what="LCM-LoRA")
    assert path.name == "pytorch_lora_weights.safetensors" and copy.replace("/", "--") in str(path)
    assert ("file", "modelscope", copy, "pytorch_lora_weights.safetensors") in hub.calls
    hub.available.clear()
    with pytest.raises(ModelNotFoundError, match=r"(?s)LCM-LoRA 'latent-consistency/lcm-lora-sdxl'.*tried: huggingface: "
                       r"latent-consistency/lcm-lora-sdxl/pytorch_lora_weights.safetensors.*tried: modelscope: latent-.*"
                       r"tried: modelscope: AI-ModelScope/lcm-lora-sdxl/pytorch_lora_weights.safetensors"):
        lora_io.resolve(fast_loras()["sdxl"], what="LCM-LoRA")


def test_hub_reference_syntax():
    assert models.parse_hub_ref("owner/name") == ("owner/name", None, "")
    assert models.parse_hub_ref("owner/name@v1.0.1/sub/dir") == ("owner/name", "v1.0.1", "sub/dir")
    assert models.parse_hub_ref("thibaud/controlnet-openpose-sdxl-1.0/OpenPoseXL2.safetensors")[2] == "OpenPoseXL2.safetensors"
    for not_hub in ("/abs/path", "./rel/x", "~/x", "single", "a//b", "owner/../x"):
        assert models.parse_hub_ref(not_hub) is None, not_hub
    with pytest.raises(InputError, match="variant must be one of"):
        models.check_variant("half")


def test_modelscope_base_fetches_only_its_sub_path(tmp_path, monkeypatch):
    """FaceChain's base (ModelScope ly261666/cv_portrait_model v2.0, sub path film/film) when the Hugging Face hub
    does not have it: only film/film's loaded files come down. Its real weight files are unknown (the fixture
    says so), so this simulated repo adds safetensors weights, a pickle-only safety checker and a second model
    folder beside film/film, all made up for the test."""
    repo, sub = "ly261666/cv_portrait_model", "film/film"
    listed = listing(repo, "modelscope")
    index = {c: ["diffusers", "X"] for c in ("scheduler", "text_encoder", "tokenizer", "unet", "vae", "safety_checker")}
    files = {**dict.fromkeys(listed["files"], ""), f"{sub}/model_index.json": json.dumps(index),
             f"{sub}/unet/config.json": json.dumps({"in_channels": 4, "_class_name": "UNet2DConditionModel"}),
             f"{sub}/unet/diffusion_pytorch_model.safetensors": "", f"{sub}/vae/config.json": "",
             f"{sub}/vae/diffusion_pytorch_model.safetensors": "", f"{sub}/text_encoder/config.json": "",
             f"{sub}/text_encoder/model.safetensors": "", f"{sub}/tokenizer/vocab.json": "",
             f"{sub}/scheduler/scheduler_config.json": "", f"{sub}/safety_checker/pytorch_model.bin": "",
             f"{sub}/safety_checker/config.json": "", "realistic/unet/diffusion_pytorch_model.safetensors": ""}
    hub = FakeHub(tmp_path, monkeypatch, {(repo, "modelscope"): files})
    resolved = models.resolve_model(repo, listed["revision"], sub)
    assert resolved.path.as_posix().endswith(sub) and resolved.family == "sd15"
    got = hub.fetched()
    assert got and all(p.startswith(sub + "/") for p in got) and not [p for p in got if "safety_checker" in p]
    assert [c[1] for c in hub.calls if c[0] == "list"] == ["huggingface", "modelscope"]


def test_depth_estimator_tries_faceChains_copy(tmp_path, monkeypatch):
    from facechain.generate.config import GenerateConfig

    depth = {f.name: f.default for f in dataclasses.fields(GenerateConfig)}["depth_estimator"]
    hub = FakeHub(tmp_path, monkeypatch, {})
    with pytest.raises(ModelNotFoundError, match=r"(?s)depth estimator 'Intel/dpt-large' could not be found.*tried: huggingface: "
                       r"Intel/dpt-large.*tried: modelscope: Intel/dpt-large.*tried: modelscope: "
                       r"damo/face_chain_control_model@v1.0.1/model_controlnet/dpt-large.*depth_image"):
        models.load_depth_estimator(depth)
    assert len([c for c in hub.calls if c[0] == "list"]) == 3
