"""facechain batch's own state: ``--resume`` reruns what an edit of the batch file or the photos changed (and
says why), ``batch.lock`` and ``batch.sqlite`` are ours only by their content (a user's files by those names
are refused and left byte-identical), a damaged manifest is one clear error with the way out, what a killed
run left beside the manifest is swept, and people's names may not collide on a case-insensitive disk."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from facechain.errors import InputError

GENERATE = ('{styles: [Business suit], num_images: 1, num_candidates: 1, batch_size: 1, num_inference_steps: 2, '
            'rank_candidates: false, fusion: "off", device: cpu, dtype: float32, detailer: "off"}')


def _write_jobs(folder: Path, model: Path, photos: Path, *, name: str = "ada", generate: str = GENERATE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "jobs.yaml"
    path.write_text(f"base_model: {model}\noutput_dir: out\nface_backend: dlib\nseed: 7\n"
                    "train: {resolution: 64, max_train_steps: 10, checkpointing_steps: 5, face_backend: none}\n"
                    f"generate: {generate}\neval: null\npeople:\n  - {{name: {name}, photos: {photos}}}\n")
    return path


def _cfg(tmp_path: Path, model: Path):
    """A batch whose one person has no photos folder: a run that got past the checks fails at once."""
    from facechain.batch import load_batch

    cfg = load_batch(_write_jobs(tmp_path, model, tmp_path / "no-photos"))
    cfg.output_dir.mkdir(parents=True)
    return cfg


def _cli(capsys, *args) -> tuple[int, str]:
    """`facechain ARGS` in this process: its exit code and what it printed."""
    from facechain.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out + out.err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------- --resume honours edits


@pytest.mark.slow
def test_resume_reruns_the_stages_whose_inputs_changed(tmp_path, tiny_sd15, capsys):
    """Styles edited and the photos pointed at another person: --resume reruns preprocess (photos changed),
    train after it (from step 0: a new LoRA, not the old one continued or refused) and generate (its styles
    changed too), saying why; an unchanged batch reruns nothing; an edit of generate alone reruns generate alone."""
    from facechain.batch import load_batch, run_batch
    from facechain.batch.manifest import Manifest
    from facechain.outputs import sha256_file
    from facechain.samples import write_demo_photos

    write_demo_photos(tmp_path / "ada")
    write_demo_photos(tmp_path / "other")
    kept = sorted(p for p in (tmp_path / "other").iterdir() if p.suffix == ".png")
    kept[0].unlink()  # another set of photos: one photo fewer
    path = _write_jobs(tmp_path / "b", tiny_sd15, tmp_path / "ada")
    out = tmp_path / "b" / "out"
    lora = out / "ada" / "lora" / "pytorch_lora_weights.safetensors"

    def run() -> tuple[dict, str]:
        result = run_batch(load_batch(path), address="inprocess", resume=True, progress=False)
        assert result.exit_code == 0, result.failed
        return {r.stage: r for r in Manifest(out / "batch.sqlite").records()}, capsys.readouterr().err

    first, _ = run()
    old_lora = sha256_file(lora)
    path.write_text(path.read_text().replace(str(tmp_path / "ada"), str(tmp_path / "other"))
                    .replace("styles: [Business suit]", "styles: [Cyberpunk]"))
    second, err = run()
    assert "ada: preprocess reruns: photos changed" in err, err
    assert "ada: train reruns: preprocess runs again" in err, err
    assert "ada: generate reruns: settings changed (styles); preprocess runs again" in err, err
    assert {s: r.attempts for s, r in second.items()} == {"preprocess": 2, "train": 2, "generate": 2}
    assert sha256_file(lora) != old_lora  # trained anew on the other photos
    starts = [e["event"] for e in map(json.loads, lora.with_name("train_log.jsonl").read_text().splitlines())
              if e.get("event") in ("start", "resume")]
    assert starts == ["start"]  # the earlier run's log went with its LoRA: one fresh start
    portraits = json.loads((out / "ada" / "portraits" / "manifest.json").read_text())
    assert "Cyberpunk" in json.dumps(portraits) and "Business suit" not in json.dumps(portraits)

    third, err = run()  # nothing changed: nothing reruns
    assert "reruns" not in err and {s: r.attempts for s, r in third.items()} == dict.fromkeys(third, 2)
    path.write_text(path.read_text().replace("num_inference_steps: 2", "num_inference_steps: 3"))
    fourth, err = run()
    assert "ada: generate reruns: settings changed (num_inference_steps)" in err, err
    assert {s: r.attempts for s, r in fourth.items()} == {"preprocess": 2, "train": 2, "generate": 3}


# ---------------------------------------------------------------------------- the user's files


def test_a_users_batch_lock_is_refused_and_left_untouched(tmp_path, tiny_sd15):
    from facechain.batch import run_batch

    cfg = _cfg(tmp_path, tiny_sd15)
    lock = cfg.output_dir / "batch.lock"
    lock.write_text("my notes about the lock on the studio door\n")
    before = _snapshot(cfg.output_dir)
    for resume in (False, True):
        with pytest.raises(InputError, match=r"batch\.lock is not facechain batch's lock file .* left untouched"):
            run_batch(cfg, address="inprocess", resume=resume, progress=False)
    assert _snapshot(cfg.output_dir) == before  # no manifest either: nothing was written beside it
    lock.write_text("")  # an empty file: not one of ours either (ours is created whole)
    with pytest.raises(InputError, match="is not facechain batch's lock file"):
        run_batch(cfg, address="inprocess", progress=False)
    assert lock.read_bytes() == b"" and not (cfg.output_dir / "batch.sqlite").exists()


def test_a_users_sqlite_file_is_refused_and_left_untouched(tmp_path, tiny_sd15, capsys):
    from facechain.batch import run_batch

    cfg = _cfg(tmp_path, tiny_sd15)
    db = cfg.output_dir / "batch.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE clients (name TEXT, booked TEXT)")
    con.execute("INSERT INTO clients VALUES ('ada', 'Tuesday')")
    con.commit()
    con.close()
    before = _snapshot(cfg.output_dir)
    for resume in (False, True):
        with pytest.raises(InputError, match=r"batch\.sqlite is not a manifest facechain batch wrote: it is an SQLite "
                                             r"database that facechain batch did not create"):
            run_batch(cfg, address="inprocess", resume=resume, progress=False)
    code, text = _cli(capsys, "batch", "status", cfg.source)
    assert code == 1 and "did not create" in text and "Traceback" not in text, text
    code, text = _cli(capsys, "batch", cfg.source, "--resume", "--address", "inprocess", "--no-progress")
    assert code == 1 and "did not create" in text and "Traceback" not in text, text
    after = _snapshot(cfg.output_dir)
    assert after.pop("batch.lock").startswith(b'{"lock": "facechain batch lock"')  # ours, made by the runs
    assert after == before  # byte-identical, and no -wal/-shm left beside it
    assert sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall() == [("clients",)]


def test_sqlite_side_files_in_the_way_of_a_new_manifest_are_refused(tmp_path, tiny_sd15):
    from facechain.batch import run_batch

    cfg = _cfg(tmp_path, tiny_sd15)
    (cfg.output_dir / "batch.sqlite-wal").write_bytes(b"someone's write-ahead log")
    with pytest.raises(InputError, match=r"batch\.sqlite-wal is in the way of a new manifest"):
        run_batch(cfg, address="inprocess", progress=False)
    assert (cfg.output_dir / "batch.sqlite-wal").read_bytes() == b"someone's write-ahead log"
    assert not (cfg.output_dir / "batch.sqlite").exists()


def test_what_a_killed_run_left_beside_the_manifest_is_swept(tmp_path, tiny_sd15):
    """``batch.sqlite.<pid>.new`` (and its -wal) of a process that is gone, with our content: removed; one whose
    pid runs, one whose content is not ours, and files that only look similar, are left alone."""
    from facechain.batch import run_batch

    cfg = _cfg(tmp_path, tiny_sd15)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import sqlite3

        from facechain.batch.manifest import APPLICATION_ID

        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        ours = cfg.output_dir / f"batch.sqlite.{dead}.new"  # what our killed creation leaves: our header
        con = sqlite3.connect(ours)
        con.execute(f"PRAGMA application_id={APPLICATION_ID}")
        con.close()
        (cfg.output_dir / f"batch.sqlite.{dead}.new-wal").write_bytes(b"half written")
        (cfg.output_dir / f"batch.lock.{dead}.new").write_bytes(b"")  # killed before its text was written
        stale = [ours, cfg.output_dir / f"batch.sqlite.{dead}.new-wal", cfg.output_dir / f"batch.lock.{dead}.new"]
        gone2 = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                   text=True).stdout)
        others = [cfg.output_dir / f"batch.sqlite.{alive.pid}.new", cfg.output_dir / "batch.sqlite.mine.new",
                  cfg.output_dir / f"batch.sqlite.{dead}.new.bak",
                  cfg.output_dir / f"batch.sqlite.{gone2}.new"]  # our name, a dead pid, but not our content
        for p in others:
            p.write_bytes(b"half written")
        result = run_batch(cfg, address="inprocess", progress=False)
        assert [r.stage for r in result.records] == ["preprocess", "train", "generate"]
        assert not any(p.exists() for p in stale)
        assert all(p.read_bytes() == b"half written" for p in others)
    finally:
        alive.kill()
        alive.wait()


# ---------------------------------------------------------------------------- a damaged manifest


def _damage(db: Path, how: str) -> None:
    if how == "truncated":
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2 + 10])
    elif how == "garbage":
        db.write_bytes(b"\x00\xffnot a database at all\n" * 300)
    elif how == "empty":
        db.write_bytes(b"")
    elif how == "no tables":  # ours, its tables dropped
        con = sqlite3.connect(db)
        con.executescript("DROP TABLE stages; DROP TABLE events;")
        con.close()
    elif how == "no tables, not ours":  # an SQLite file with nothing in it, not made by us
        db.unlink()
        con = sqlite3.connect(db)
        con.executescript("CREATE TABLE t (x); DROP TABLE t;")
        con.close()


@pytest.mark.parametrize("how, words", [
    ("truncated", "cannot be read"),
    ("garbage", "it is not an SQLite database"),
    ("empty", r"it is empty \(0 bytes\)"),
    ("no tables", "its tables are missing"),
    ("no tables, not ours", "facechain batch did not create"),
])
def test_a_damaged_manifest_is_one_clear_error_with_the_way_out(tmp_path, tiny_sd15, how, words, capsys):
    from facechain.batch import run_batch

    cfg = _cfg(tmp_path, tiny_sd15)
    first = run_batch(cfg, address="inprocess", progress=False)  # a real manifest, its one stage failed
    assert first.exit_code == 1 and first.failed[0][1] == "preprocess"
    db = cfg.manifest_path
    for _ in range(20):  # rows, so that half the file misses pages
        run_batch(cfg, address="inprocess", resume=True, progress=False)
    _damage(db, how)
    damaged = db.read_bytes()
    for resume in (False, True):
        with pytest.raises(InputError, match=words) as err:
            run_batch(cfg, address="inprocess", resume=resume, progress=False)
        assert "move it aside" in str(err.value) and "--resume" in str(err.value)
    code, text = _cli(capsys, "batch", "status", cfg.source)
    assert code == 1 and "Traceback" not in text and "move it aside" in text, text
    assert db.read_bytes() == damaged  # left as it was
    # the way out the message gives: moved aside, --resume starts a new manifest and runs the stages again
    shutil.move(db, db.with_name("batch.sqlite.damaged"))
    again = run_batch(cfg, address="inprocess", resume=True, progress=False)
    assert [(r.stage, r.state, r.attempts) for r in again.records][0] == ("preprocess", "failed", 1)


# ---------------------------------------------------------------------------- names


def test_names_equal_up_to_case_are_refused(tmp_path, tiny_sd15):
    from facechain.batch import load_batch

    path = tmp_path / "j.yaml"
    path.write_text(f"base_model: {tiny_sd15}\noutput_dir: out\npeople:\n  - {{name: Alice, photos: p}}\n"
                    "  - {name: bob, photos: q}\n  - {name: alice, photos: r}\n")
    with pytest.raises(InputError, match=r"people\[2\]: name 'alice' and people\[0\]'s name 'Alice' differ only in case"):
        load_batch(path)
