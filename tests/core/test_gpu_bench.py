"""benchmarks/gpu.py, the one-run GPU benchmark, before a GPU is at hand: its published configs give the
published architectures (parameter counts, on the meta device), its driver keeps every part's row
(ok, error, timeout, skipped) and the figures measured before a failure, its rows become RESULTS.md's
section, and ``--smoke`` runs every part for real on tiny models on the CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _params(module_cls, cfg) -> int:
    import torch

    with torch.device("meta"):
        model = module_cls(cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow  # ~9 s: diffusers/transformers imports and five meta-device models
def test_builtin_configs_are_the_published_architectures(gpu, tmp_path):
    """Parameter counts of the published models (SD1.5 UNet 859.52 M, SDXL UNet 2567.46 M, the VAE 83.65 M,
    CLIP ViT-L/14 text 123.06 M, OpenCLIP ViT-bigG/14 text with projection 694.66 M)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from facechain.testing import make_tokenizer

    tok = make_tokenizer(tmp_path / "tok")
    sd15, source, vocab = gpu.published_configs("sd15", tmp_path / "absent")
    sdxl, _, _ = gpu.published_configs("sdxl", tmp_path / "absent")
    assert "BUILTIN_CONFIGS" in source and vocab is None
    assert _params(UNet2DConditionModel.from_config, sd15["unet"]) == 859_520_964
    assert _params(UNet2DConditionModel.from_config, sdxl["unet"]) == 2_567_463_684
    assert _params(AutoencoderKL.from_config, sd15["vae"]) == _params(AutoencoderKL.from_config, sdxl["vae"]) == 83_653_863
    assert _params(CLIPTextModel, gpu._text_config(sd15["text_encoder"], tok)) == 123_060_480
    assert _params(CLIPTextModelWithProjection, gpu._text_config(sdxl["text_encoder_2"], tok)) == 694_659_840


def test_configs_folder_is_read_by_architecture_not_name(gpu, tmp_path):
    """A diffusers-layout folder under the configs directory is used for the family its UNet config
    says (SDXL: addition_embed_type text_time), whatever the folder is called; its tokenizer too."""
    folder = tmp_path / "configs" / "some-model"
    unet = {**gpu.BUILTIN_CONFIGS["sdxl"]["unet"], "sample_size": 96}
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps(unet))
    (folder / "tokenizer").mkdir()
    for name in ("vocab.json", "merges.txt"):
        (folder / "tokenizer" / name).write_text("{}")
    configs, source, vocab = gpu.published_configs("sdxl", tmp_path / "configs")
    assert configs["unet"]["sample_size"] == 96 and source.endswith("some-model") and vocab == folder / "tokenizer"
    assert configs["vae"] == gpu.BUILTIN_CONFIGS["sdxl"]["vae"]  # missing components: the built-in values
    sd15, source15, _ = gpu.published_configs("sd15", tmp_path / "configs")
    assert "BUILTIN_CONFIGS" in source15 and sd15 is gpu.BUILTIN_CONFIGS["sd15"]


def _bench(gpu, tmp_path):
    return gpu.Bench(gpu.SMOKE, tmp_path, tmp_path / "rows.jsonl", "cpu")


@pytest.mark.slow  # runs the driver's commands as processes (and kills one)
def test_driver_keeps_every_part_row_and_partial_figures(gpu, tmp_path):
    def fails_after_a_figure(b):
        b.figure("first figure", 1.5, "s")
        raise RuntimeError("broken after one figure")

    def too_slow(b):
        b.figure("before the limit", 2.0, "s")
        time.sleep(30)

    def fine(b):
        b.figure("answer", 42, "x")

    def library_catches_errors(b):  # as run_job does with a style's failure
        try:
            time.sleep(30)
        except Exception as exc:
            raise RuntimeError("style failed") from exc

    import torch  # noqa: F401  (imported before the clock starts: the driver reads memory through it)

    parts = [gpu.Part("a_fails", fails_after_a_figure, 1, 1, ""),
             gpu.Part("b_needs_model", lambda b: b.model("sdxl"), 1, 1, ""),
             gpu.Part("c_costly", fine, 10_000, 10_000, ""), gpu.Part("d_fine", fine, 1, 1, ""),
             gpu.Part("e_slow", too_slow, 1, 1, "", limit_s=1.0),
             gpu.Part("f_caught", library_catches_errors, 1, 1, "", limit_s=1.0)]
    b = _bench(gpu, tmp_path)
    rows = gpu.run_parts(b, parts, budget=60.0)
    status = {r["part"]: r["status"] for r in rows}
    assert status == {"a_fails": "error", "b_needs_model": "skipped", "c_costly": "skipped", "d_fine": "ok",
                      "e_slow": "timeout", "f_caught": "timeout"}
    by_part = {r["part"]: r for r in rows}
    assert "broken after one figure" in by_part["a_fails"]["error"] and "RuntimeError" in by_part["a_fails"]["traceback"]
    assert by_part["e_slow"]["seconds"] < 5 and "time limit of 1 s" in by_part["e_slow"]["error"]
    assert "--budget-s" in by_part["c_costly"]["error"] and "--only c_costly" in by_part["c_costly"]["error"]
    assert "build_sdxl" in by_part["b_needs_model"]["error"]
    written = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    figures = {(r["part"], r["figure"]): r["value"] for r in written if r["kind"] == "figure"}
    assert figures[("a_fails", "first figure")] == 1.5 and figures[("e_slow", "before the limit")] == 2.0
    assert [r["part"] for r in written if r["kind"] == "part"] == [p.name for p in parts]


@pytest.mark.slow  # runs the driver's commands as processes (and kills one)
def test_a_timed_out_command_stops_its_whole_process_group(gpu, tmp_path):
    """train_lora.sh runs the trainer as a grandchild: a part's time limit stops all of them."""
    b = _bench(gpu, tmp_path)
    pid_file = tmp_path / "grandchild.pid"
    script = f"sleep 60 & echo $! > {pid_file}; wait"
    b.deadline = time.perf_counter() + 2
    with pytest.raises(gpu.PartTimeout):
        b.run_cmd(["sh", "-c", script])
    pid = int(pid_file.read_text())
    time.sleep(0.2)
    stat = Path(f"/proc/{pid}/stat")
    # gone, or a zombie waiting for whoever adopted it (sh was stopped too) to reap it
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _rows(profile="full"):
    return [{"kind": "machine", "profile": profile, "date": "2026-12-02 20:00 UTC", "python": "3.11.9", "torch": "2.15",
             "diffusers": "0.42.1", "transformers": "5.1", "cpus": 16, "budget_s": 420, "device": "cuda",
             "gpu": "NVIDIA H200", "gpu_memory_gib": 139.8, "cuda": "12.8", "driver": "570.1"},
            {"kind": "model", "family": "sd15", "configs": "BUILTIN", "tokenizer": "byte-level"},
            {"kind": "figure", "part": "train_sd15", "figure": "steps/s", "value": 14.25, "unit": "steps/s", "note": "bf16"},
            {"kind": "part", "part": "train_sd15", "status": "ok", "seconds": 40.0},
            {"kind": "part", "part": "stylize_sd15", "status": "timeout", "seconds": 90.0,
             "error": "stopped at its time limit of 90 s"}]


def test_write_results_replaces_the_section_between_its_markers(gpu, tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text(f"# Results\n\nbefore\n\n{gpu.BEGIN}\nNone measured yet.\n{gpu.END}\n\nafter\n")
    rows = tmp_path / "r.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in _rows()) + "\n{\"kind\": \"fig")  # a killed run's half line
    assert gpu.main(["--write-results", str(rows), "--results-md", str(md)]) == 0
    text = md.read_text()
    assert text.startswith("# Results\n\nbefore\n") and text.endswith("\n\nafter\n") and "None measured yet" not in text
    assert "NVIDIA H200 (139.8 GiB), driver 570.1, CUDA 12.8" in text
    assert "| train_sd15 | steps/s | 14.25 | steps/s | bf16 |" in text
    assert "Parts: 1 of 2 ok" in text and "**stylize_sd15: timeout** (stopped at its time limit of 90 s)" in text
    assert gpu.main(["--write-results", str(rows), "--results-md", str(md)]) == 0
    assert md.read_text() == text  # idempotent: the section is replaced, not appended to


def test_smoke_rows_are_not_written_as_gpu_figures(gpu, tmp_path):
    rows = tmp_path / "r.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in _rows("smoke")))
    before = gpu.RESULTS_MD.read_text()
    with pytest.raises(SystemExit, match="--smoke rows"):
        gpu.main(["--write-results", str(rows)])
    assert gpu.RESULTS_MD.read_text() == before


def test_list_names_every_part_with_its_cost(gpu, capsys):
    assert gpu.main(["--list"]) == 0
    out = capsys.readouterr().out
    for p in gpu.PARTS:
        assert p.name in out
    names = [p.name for p in gpu.PARTS]
    assert len(names) == len(set(names)) and names.index("build_sd15") < names.index("train_sd15")
    assert names.index("build_sdxl") < names.index("train_sdxl")


@pytest.mark.slow
def test_smoke_runs_every_part_on_tiny_models(gpu, tmp_path):
    """The whole script, as a subprocess, on tiny models on the CPU: every part ran (none skipped or
    failed) and gave finite figures; the RESULTS.md section renders from its rows."""
    md = tmp_path / "RESULTS.md"
    md.write_text(f"{gpu.BEGIN}\n{gpu.END}\n")
    out = tmp_path / "smoke.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--results-md", str(md),
                           "--workdir", str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=900)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    parts = {r["part"]: r for r in rows if r["kind"] == "part"}
    failed = {k: v.get("error") for k, v in parts.items() if v["status"] != "ok"}
    assert proc.returncode == 0 and not failed, f"{failed}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert list(parts) == [p.name for p in gpu.PARTS]
    figures = [r for r in rows if r["kind"] == "figure"]
    for name in parts:
        mine = [r for r in figures if r["part"] == name]
        assert mine and all(math.isfinite(r["value"]) for r in mine), name
    assert rows[0]["kind"] == "machine" and rows[0]["profile"] == "smoke"
    text = md.read_text()
    assert "profile `smoke`" in text and f"Parts: {len(parts)} of {len(parts)} ok" in text
