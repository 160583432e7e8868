"""facechain batch: the batch file, the SQLite manifest under concurrent writers, and whole batches of
three people (one with no usable photo) on the tiny model through a local Ray runtime, including a driver
killed with SIGKILL and resumed, and a training worker killed and retried from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from facechain.errors import InputError

GENERATE = ('{styles: [Business suit], num_images: 1, num_candidates: 2, batch_size: 2, num_inference_steps: 2, '
            'rank_candidates: false, fusion: "off", device: cpu, dtype: float32, detailer: "off"}')


def _photos(root: Path) -> Path:
    from facechain.samples import write_demo_photos

    write_demo_photos(root / "alice")
    write_demo_photos(root / "bob")
    (root / "carol").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (root / "carol" / f"{i}.png").write_text("not a photo")
    return root


def _jobs(folder: Path, model: Path, photos: Path, *, out="out", train="{resolution: 64, max_train_steps: 20, "
          "checkpointing_steps: 10}", people=("alice", "bob", "carol"), extra="", generate=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"base_model: {model}", f"output_dir: {out}", "face_backend: dlib", "seed: 7", f"train: {train}",
             f"generate: {generate or GENERATE}", extra, "people:"]
    lines += [f"  - {{name: {p}, photos: {photos / p}" + (", generate: {styles: [Cyberpunk]}" if p == "bob" else "")
              + "}" for p in people]
    path = folder / "jobs.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def _batch(*args, cwd: Path, wait: bool = True, log: Path | None = None):
    cmd = [sys.executable, "-m", "facechain", "batch", *map(str, args), "--no-progress"]
    if wait:
        return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _records(out: Path) -> dict:
    from facechain.batch import Manifest

    return {(r.person, r.stage): r for r in Manifest(out / "batch.sqlite").records()}


def _same_results(out: Path, ref: Path) -> None:
    """What seeds fix is the same: each finished person's LoRA (to the trainer's own resume tolerance: a
    resumed training matches an uninterrupted one to rtol 1e-4, tests/train/test_train_resume.py) and kept
    portraits (bit for bit when the LoRA is; else within one grey level on average)."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    from facechain.outputs import sha256_file

    for person in ("alice", "bob"):
        a, b = (load_file(str(d / person / "lora" / "pytorch_lora_weights.safetensors")) for d in (out, ref))
        assert set(a) == set(b)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
        exact = all(torch.equal(a[k], b[k]) for k in a)
        pngs = sorted(p.name for p in (ref / person / "portraits").glob("*.png") if p.name != "contact_sheet.png")
        assert pngs and pngs == sorted(p.name for p in (out / person / "portraits").glob("*.png")
                                       if p.name != "contact_sheet.png")
        for name in pngs:
            x, y = (out / person / "portraits" / name, ref / person / "portraits" / name)
            if exact:
                assert sha256_file(x) == sha256_file(y), (person, name)
            else:
                diff = np.abs(np.asarray(Image.open(x), np.int16) - np.asarray(Image.open(y), np.int16))
                assert diff.mean() < 1.0, (person, name, diff.mean())


# ---------------------------------------------------------------------------- the batch file


def test_batch_file_shares_settings_and_takes_overrides(tmp_path, tiny_sd15):
    from facechain.batch import load_batch

    path = _jobs(tmp_path / "b", tiny_sd15, Path("photos"), extra="preprocess: {size: 256}\nresources: {train_gpus: 0.25}")
    cfg = load_batch(path)
    alice, bob, carol = cfg.people
    assert cfg.output_dir == (tmp_path / "b" / "out").resolve() and cfg.resources.train_gpus == 0.25
    assert alice.photos == (tmp_path / "b" / "photos" / "alice").resolve()  # relative to the batch file
    assert alice.train.seed == 7 and alice.generate.seed == 7  # a shared key goes to every stage that has it
    assert alice.preprocess.face_backend == "dlib" and alice.eval.face_backend == "dlib" and alice.preprocess.size == 256
    assert alice.train.resume is True and alice.train.output_dir == str(cfg.output_dir / "alice" / "lora")
    assert alice.generate.lora_dir == cfg.output_dir / "alice" / "lora"
    assert alice.generate.base_model == str(tiny_sd15)  # generation uses the model the LoRA was trained on
    assert alice.generate.styles == ["Business suit"] and bob.generate.styles == ["Cyberpunk"]
    assert carol.stages == ("preprocess", "train", "generate", "eval")


@pytest.mark.parametrize("text, words", [
    ("colour: red", r"unknown settings \['colour'\]"),
    ("train: {output_dir: x}", r"sets \['output_dir'\]: the batch sets these folders per person"),
    ("lora_dir: x", "is set per person by the batch"),
    ("resources: {train_gpus: 1.5}", "must be a fraction of one GPU"),
    ("generate: {num_images: 0}", "person alice.generate.*num_images must be at least 1"),
])
def test_bad_batch_files_name_the_setting(tmp_path, tiny_sd15, text, words):
    from facechain.batch import load_batch

    key, _, value = text.partition(": ")
    kwargs = {key: value} if key in ("train", "generate") else {"extra": text}  # a stage block replaces the shared one
    with pytest.raises(InputError, match=words):
        load_batch(_jobs(tmp_path, tiny_sd15, Path("photos"), **kwargs))


def test_bad_people_are_refused(tmp_path, tiny_sd15):
    from facechain.batch import load_batch

    for people, words in [("  - {name: a, photos: p}\n  - {name: a, photos: q}", "is used twice"),
                          ("  - {name: ../x, photos: p}", "must be 1-64 letters"),
                          ("  - {name: a}", "photos is missing"),
                          ("  - {name: a, photos: p, colour: red}", r"unknown keys \['colour'\]")]:
        path = tmp_path / "j.yaml"
        path.write_text(f"base_model: {tiny_sd15}\noutput_dir: out\npeople:\n{people}\n")
        with pytest.raises(InputError, match=words):
            load_batch(path)


# ---------------------------------------------------------------------------- the manifest


def test_manifest_survives_concurrent_writers(tmp_path):
    """Four processes write at once: every record and event is there, none torn; a shared counter loses no
    increment (one transaction per record)."""
    from facechain.batch import Manifest

    m = Manifest(tmp_path / "batch.sqlite")
    m.create()
    assert [p.name for p in tmp_path.iterdir()] == ["batch.sqlite"]  # built beside, renamed into place whole
    assert m.records() == []
    for p in range(4):
        m.ensure(f"p{p}", ("a", "b"))
    m.ensure("shared", ("count",))
    script = textwrap.dedent(f"""
        import sys
        from facechain.batch.manifest import Manifest
        m = Manifest({str(m.path)!r})
        me = sys.argv[1]
        for i in range(40):
            m.start(me, "a")
            m.finish(me, "a", {{f"{{me}}/file_{{i}}": "x" * 64}}, 0.5)
            m.start("shared", "count")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, f"p{p}"], env=_env()) for p in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    recs = _records(tmp_path)
    assert recs[("shared", "count")].attempts == 160
    for p in range(4):
        r = recs[(f"p{p}", "a")]
        assert r.state == "done" and r.attempts == 40 and r.outputs == {f"p{p}/file_39": "x" * 64}
        assert recs[(f"p{p}", "b")].state == "pending"
    assert len(m.events()) == 4 * 40 * 3
    import sqlite3

    assert sqlite3.connect(m.path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


# ---------------------------------------------------------------------------- whole batches on Ray


@pytest.fixture(scope="module")
def batch_inputs(tmp_path_factory, tiny_sd15):
    root = tmp_path_factory.mktemp("batch")
    return root, _photos(root / "photos"), tiny_sd15


@pytest.fixture(scope="module")
def uninterrupted(batch_inputs):
    root, photos, model = batch_inputs
    path = _jobs(root / "plain", model, photos)
    proc = _batch(path, cwd=root)
    return path, proc


@pytest.mark.slow
def test_three_people_on_ray_one_with_bad_photos(uninterrupted):
    """Two finish with LoRAs and portraits; carol's photos are all invalid: reported with the reason, exit 1."""
    path, proc = uninterrupted
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = path.parent / "out"
    recs = _records(out)
    for person in ("alice", "bob"):
        assert all(recs[(person, s)].state == "done" and recs[(person, s)].attempts == 1
                   for s in ("preprocess", "train", "generate", "eval"))
        assert (out / person / "lora" / "pytorch_lora_weights.safetensors").is_file()
        assert (out / person / "portraits" / "manifest.json").is_file() and (out / person / "eval" / "report.json").is_file()
        assert recs[(person, "train")].outputs  # checksums recorded
    assert recs[("carol", "preprocess")].state == "failed" and "no photo was kept" in recs[("carol", "preprocess")].error
    assert recs[("carol", "train")].state == "pending"
    assert "carol preprocess failed: no photo was kept" in proc.stdout and "2 of 3 people finished" in proc.stdout
    assert "alice: train running (attempt 1)" in proc.stderr and "bob: generate done" in proc.stderr
    status = _batch("status", path, cwd=path.parent)
    assert status.returncode == 0 and "alice" in status.stdout and "failed" in status.stdout
    # a second run without --resume is refused; with it, nothing done reruns
    again = _batch(path, cwd=path.parent)
    assert again.returncode == 1 and "Pass --resume" in again.stderr


@pytest.mark.slow
def test_driver_killed_then_resumed(batch_inputs, uninterrupted):
    """SIGKILL the driver (and the Ray runtime it started) mid-batch; --resume finishes without rerunning any
    finished stage, and the LoRAs and portraits are identical to the uninterrupted run's."""
    root, photos, model = batch_inputs
    path = _jobs(root / "killed", model, photos)
    out = path.parent / "out"
    proc = _batch(path, cwd=root, wait=False, log=root / "killed.log")
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(0.5)
            if (out / "batch.sqlite").is_file():
                recs = _records(out)
                if recs and any(r.state == "done" for r in recs.values()) and ("alice", "train") in recs \
                        and recs[("alice", "train")].state in ("running", "done") and recs[("bob", "eval")].state != "done":
                    break
            assert proc.poll() is None, (root / "killed.log").read_text()
    finally:  # the driver and the Ray runtime it started: killed here, also when the test fails
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _records(out)
    finished = {k: r.finished for k, r in before.items() if r.state == "done"}
    assert finished and len(finished) < 8
    resumed = _batch(path, "--resume", cwd=root)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr  # carol, as before
    after = _records(out)
    for key, when in finished.items():  # no finished stage ran again
        assert after[key].attempts == 1 and after[key].finished == when, key
    assert all(after[(p, s)].state == "done" for p in ("alice", "bob") for s in ("preprocess", "train", "generate", "eval"))
    _same_results(out, uninterrupted[0].parent / "out")


@pytest.mark.slow
def test_training_worker_killed_is_retried_from_its_checkpoint(batch_inputs):
    root, photos, model = batch_inputs
    path = _jobs(root / "worker", model, photos, people=("alice",),
                 train="{resolution: 64, max_train_steps: 160, checkpointing_steps: 20, face_backend: none}")
    out = path.parent / "out"
    proc = _batch(path, cwd=root, wait=False, log=root / "worker.log")
    from facechain.train.checkpoint import list_checkpoints

    try:
        deadline, pid = time.time() + 300, None
        while time.time() < deadline and pid is None:
            time.sleep(0.2)
            if (out / "batch.sqlite").is_file():
                r = _records(out).get(("alice", "train"))
                if r is not None and r.state == "running" and list_checkpoints(out / "alice" / "lora"):
                    pid = int(r.worker.rsplit(":", 1)[1])
            assert proc.poll() is None, (root / "worker.log").read_text()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=600) == 0, (root / "worker.log").read_text()
    finally:  # never leave the batch (and its Ray runtime) running after a failure
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    r = _records(out)[("alice", "train")]
    assert r.state == "done" and r.attempts == 2
    starts = [e for e in map(json.loads, (out / "alice" / "lora" / "train_log.jsonl").read_text().splitlines())
              if e.get("event") in ("start", "resume")]
    assert [e["event"] for e in starts] == ["start", "resume"] and starts[1]["step"] >= 20  # resumed, not restarted


def test_one_driver_per_batch_folder(tmp_path, tiny_sd15):
    from facechain.batch import load_batch, run_batch
    from facechain.batch.runner import _Lock

    cfg = load_batch(_jobs(tmp_path, tiny_sd15, Path("photos")))
    cfg.output_dir.mkdir(parents=True)
    held = _Lock(cfg.output_dir)
    try:
        with pytest.raises(InputError, match=f"another facechain batch is running on .* \\(pid {os.getpid()} on "):
            run_batch(cfg, address="inprocess", progress=False)
    finally:
        held.release()
    with pytest.raises(InputError, match="--address 'nowhere'"):
        run_batch(cfg, address="nowhere", progress=False)


@pytest.mark.slow
def test_template_stage_in_process(tmp_path, tiny_sd15):
    """A `template:` block adds a template stage: the person alone in the template photo, after generation."""
    from facechain import samples
    from facechain.batch import load_batch, run_batch
    from facechain.io import save_image

    save_image(tmp_path / "tpl.png", samples.astronaut())
    photos = _photos(tmp_path / "photos")
    path = _jobs(tmp_path / "b", tiny_sd15, photos, people=("alice",),
                 extra=f"template: {{template: {tmp_path / 'tpl.png'}, controls: [], num_inference_steps: 4, "
                       "fusion: 'off', device: cpu, dtype: float32}\neval: null")
    cfg = load_batch(path)
    assert cfg.people[0].stages == ("preprocess", "train", "generate", "template")
    assert cfg.people[0].template.base_model == str(tiny_sd15) and cfg.people[0].template.people[0].face is None
    result = run_batch(cfg, address="inprocess", progress=False)
    assert result.exit_code == 0, result.failed
    recs = _records(cfg.output_dir)
    assert recs[("alice", "template")].state == "done"
    assert set(recs[("alice", "template")].outputs) == {"alice/template/result.png", "alice/template/manifest.json"}
    with pytest.raises(InputError, match="template .the template photo. is missing"):
        load_batch(_jobs(tmp_path / "c", tiny_sd15, photos, people=("alice",), extra="template: {face: 0}"))


def test_the_stage_table_lists_every_stage_in_the_batch_order():
    from facechain.batch.config import STAGES
    from facechain.batch.stages import STAGE_TABLE

    assert tuple(STAGE_TABLE) == STAGES
    assert [s.name for s in STAGE_TABLE.values() if s.on_worker] == ["generate"]  # the one long-lived worker
