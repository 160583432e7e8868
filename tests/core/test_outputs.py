"""Output folders facechain owns: the ownership record, replace-on-success, locks, recovery after
a kill, and the rule that nothing facechain did not write is ever deleted or overwritten."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from facechain.errors import InputError
from facechain.outputs import STATE_DIR, OutputConflictError, OutputDir, OutputInUseError

REPO = Path(__file__).resolve().parents[2]
USER_FILES = {"holiday_01.png": b"holiday", "wedding_2023_12.png": b"wedding", "img_99.png": b"img",
              "manifest.json": b'{"mine": true}', "contact_sheet.png": b"sheet", "candidates/x_001.png": b"cand",
              "000.png": b"zero", "metadata.jsonl": b"{}\n"}


def user_folder(folder: Path) -> dict[Path, bytes]:
    files = {}
    for rel, data in USER_FILES.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        files[p] = data
    return files


def assert_intact(files: dict[Path, bytes]) -> None:
    for p, data in files.items():
        assert p.is_file() and p.read_bytes() == data, p


def commit_files(od: OutputDir, files: dict[str, bytes], **kw) -> None:
    stage = od.stage()
    for rel, data in files.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_bytes(data)
    od.commit(stage, **kw)


@pytest.mark.unit
def test_a_folder_of_user_files_is_refused_and_never_touched(tmp_path):
    files = user_folder(tmp_path / "photos")
    with pytest.raises(InputError, match=r"holds files that `facechain generate` did not write .*--allow-other-files"):
        OutputDir.acquire(tmp_path / "photos", "generate")
    assert_intact(files)
    with OutputDir.open(tmp_path / "photos", "generate", allow_other_files=True) as od:
        commit_files(od, {"chef_00.png": b"a", "candidates/chef_000.png": b"b", "result.json": b"{}"})
    with OutputDir.open(tmp_path / "photos", "generate", allow_other_files=True) as od:
        commit_files(od, {"ink_00.png": b"c"})  # replaces our previous set only
    assert_intact(files)
    assert (tmp_path / "photos" / "ink_00.png").read_bytes() == b"c"
    assert not (tmp_path / "photos" / "chef_00.png").exists() and not (tmp_path / "photos" / "result.json").exists()
    assert sorted(p.name for p in (tmp_path / "photos" / "candidates").iterdir()) == ["x_001.png"]


@pytest.mark.unit
def test_a_result_landing_on_a_user_file_stops_the_commit_before_anything_moves(tmp_path):
    files = user_folder(tmp_path / "out")
    with OutputDir.open(tmp_path / "out", "generate", allow_other_files=True) as od:
        with pytest.raises(OutputConflictError, match=r"manifest.json.*Nothing was moved"):
            commit_files(od, {"a_00.png": b"new", "manifest.json": b"{}"})
    assert_intact(files)
    assert not (tmp_path / "out" / "a_00.png").exists()
    # a user file in the place of one of our folders blocks too
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "candidates").write_bytes(b"a file")
    with OutputDir.open(tmp_path / "out2", "generate", allow_other_files=True) as od:
        with pytest.raises(OutputConflictError):
            commit_files(od, {"candidates/a_000.png": b"x"})
    assert (tmp_path / "out2" / "candidates").read_bytes() == b"a file"


@pytest.mark.unit
def test_a_file_changed_by_the_user_is_no_longer_ours(tmp_path):
    out = tmp_path / "out"
    with OutputDir.open(out, "stylize") as od:
        commit_files(od, {"a.png": b"ours", "b.png": b"ours too"})
    (out / "a.png").write_bytes(b"edited by the user")
    with OutputDir.open(out, "stylize", allow_other_files=True) as od:
        assert not od.owns("a.png") and od.owns("b.png")
        commit_files(od, {"c.png": b"new"})
        with pytest.raises(OutputConflictError):
            commit_files(od, {"a.png": b"would overwrite the user's edit"})
    assert (out / "a.png").read_bytes() == b"edited by the user"
    assert not (out / "b.png").exists() and (out / "c.png").read_bytes() == b"new"


@pytest.mark.unit
def test_commands_do_not_own_each_others_files(tmp_path):
    out = tmp_path / "out"
    with OutputDir.open(out, "preprocess") as od:
        commit_files(od, {"000.png": b"p"})
    with pytest.raises(InputError, match="did not write .*000.png"):
        OutputDir.acquire(out, "generate")


@pytest.mark.unit
def test_replace_false_keeps_the_previous_set(tmp_path):
    out = tmp_path / "out"
    with OutputDir.open(out, "generate") as od:
        commit_files(od, {"a_00.png": b"a", "manifest.json": b"{}"})
        commit_files(od, {"failed_manifest.json": b"{}"}, replace=False)
        assert set(od.files) == {"a_00.png", "manifest.json", "failed_manifest.json"}
    assert (out / "a_00.png").is_file() and (out / "failed_manifest.json").is_file()


@pytest.mark.unit
def test_paths_that_cannot_be_output_folders_are_clear_errors(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        OutputDir.acquire(tmp_path / "file.txt", "generate")
    with pytest.raises(InputError, match="is a file, so the folder cannot be created"):
        OutputDir.acquire(tmp_path / "file.txt" / "sub", "generate")


@pytest.mark.unit
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_folder_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match="not writable"):
            OutputDir.acquire(ro / "out", "generate")
    finally:
        ro.chmod(0o755)


def test_a_second_run_on_a_locked_folder_is_told_who_holds_it(tmp_path, hold_lock):
    proc = hold_lock(tmp_path / "out", "train")
    with pytest.raises(OutputInUseError, match=rf"in use by pid {proc.pid} on .*facechain train"):
        OutputDir.acquire(tmp_path / "out", "train")
    proc.kill()
    proc.wait()
    # the holder is gone (killed: no chance to clean up): its lock file is no lock
    with OutputDir.open(tmp_path / "out", "train") as od:
        holder = json.loads((od.state / "lock").read_text())
        assert holder["pid"] == os.getpid()


def test_stale_lock_file_without_flock_is_taken_over(tmp_path, monkeypatch):
    """Where flock is unsupported, a lock whose pid no longer runs on this host is stale."""
    import fcntl
    import socket

    out = tmp_path / "out"
    (out / STATE_DIR).mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / STATE_DIR / "lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "train"}))

    def no_flock(fd, op):
        raise OSError(37, "No locks available")  # ENOLCK

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with OutputDir.open(out, "train"):
        pass
    (out / STATE_DIR / "lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "command": "train"}))
    with pytest.raises(OutputInUseError, match=f"pid {os.getppid()}"):
        OutputDir.acquire(out, "train")


def test_a_commit_killed_halfway_is_completed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    with OutputDir.open(out, "generate") as od:
        commit_files(od, {"old_00.png": b"old", "manifest.json": b'{"job": 1}'})
    # kill the process in the middle of the next commit: after two files moved
    code = textwrap.dedent(f"""
        import os
        from facechain.outputs import OutputDir
        od = OutputDir.acquire({str(out)!r}, "generate")
        stage = od.stage()
        for name, data in [("new_00.png", b"new"), ("new_01.png", b"new1"), ("manifest.json", b'{{"job": 2}}')]:
            (stage / name).write_bytes(data)
        real = os.replace
        moved = []
        def replace(a, b):
            real(a, b)
            moved.append(b)
            if len(moved) == 2:
                os._exit(9)
        os.replace = replace
        od.commit(stage)
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    with OutputDir.open(out, "generate") as od:
        assert od.pending is None
        assert sorted(od.files) == ["manifest.json", "new_00.png", "new_01.png"]
    assert json.loads((out / "manifest.json").read_text()) == {"job": 2}
    assert sorted(p.name for p in out.iterdir()) == [STATE_DIR, "manifest.json", "new_00.png", "new_01.png"]


@pytest.mark.unit
def test_temporary_files_of_a_killed_run_are_swept(tmp_path):
    out = tmp_path / "out"
    with OutputDir.open(out, "generate") as od:
        stage = od.stage()
        (stage / "half.png").write_bytes(b"x")
        (od.tmp() / "partial.tmp").write_bytes(b"x")
        (od.state / ".generate.json.abc123.tmp").write_bytes(b"{")  # a record write cut short
    with OutputDir.open(out, "generate") as od:
        assert not any((od.state / "staging").iterdir()) and not any((od.state / "tmp").iterdir())
        assert not list(od.state.glob(".*.tmp"))


@pytest.mark.unit
def test_outputs_have_normal_permissions(tmp_path):
    out = tmp_path / "out"
    with OutputDir.open(out, "generate") as od:
        stage = od.stage()
        from facechain.io import save_safetensors, write_json

        import torch

        write_json(stage / "manifest.json", {})
        save_safetensors(stage / "w.safetensors", {"a": torch.zeros(1)})
        od.commit(stage)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("manifest.json", "w.safetensors", f"{STATE_DIR}/generate.json", f"{STATE_DIR}/lock"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


# --------------------------------------------------------------------------- every deletion is covered by the rule

# (file, line pattern): every place the package deletes something, and why the rule covers it.
ALLOWED_DELETIONS = {
    ("facechain/batch/manifest.py", "p.unlink(missing_ok=True)"):
        "a batch.sqlite.<pid>.new (and its -wal/-shm/-journal) an earlier run of ours left, its pid gone (sweep_leftovers)",
    ("facechain/batch/manifest.py", "tmp.unlink(missing_ok=True)"): "the manifest's own <pid>.new name once hard-linked into place",
    ("facechain/batch/runner.py", "tmp.unlink(missing_ok=True)"): "the lock's own temp name once hard-linked into place",
    ("facechain/batch/stages.py", "n = od.remove(list(od.files))"): "OutputDir.remove: training's recorded files, on inputs that changed",
    ("facechain/server/service.py", "shutil.rmtree(folder)"):
        "a person's or a job's folder under the server's workdir (people/<random id>, jobs/<random id>): "
        "every file in it was written by the server (delete_person)",
    ("facechain/server/service.py", "shutil.rmtree(self.job_dir(job.id)"):
        "a job folder the server made: the one submit() just created (refused job), or a finished job past retention_days",
    ("facechain/server/service.py", "path.unlink(missing_ok=True)"):
        "the identity adapter's cached embedding of a deleted person's photos (written by identity_embedding, found by its content key)",
    ("facechain/server/stages.py", "shutil.rmtree(ws.lora)"): "a server person's lora/ folder (written by the server's training), on restart: true",
    ("facechain/server/gradio_files.py", "path.unlink(missing_ok=True)"):
        "a file in the server's own Gradio cache (<workdir>/.web-cache, made by use_cache): an upload once read, "
        "a copy of a deleted person's file, or one past web_cache_hours",
    ("facechain/server/gradio_files.py", "parent.rmdir()"): "an emptied hashed folder inside the server's own Gradio cache",
    ("facechain/outputs/folder.py", "p.unlink()"): "an output the record lists, checksum verified (_delete_owned)",
    ("facechain/outputs/folder.py", "shutil.rmtree(stage, ignore_errors=True)"): "a committed staging folder inside .facechain",
    ("facechain/outputs/folder.py", "shutil.rmtree(p, ignore_errors=True)"): "staging/tmp items inside .facechain (_sweep)",
    ("facechain/outputs/folder.py", "p.unlink(missing_ok=True)"): "staging/tmp items and record temp files inside .facechain (_sweep)",
    ("facechain/outputs/folder.py", "parent.rmdir()"): "an emptied folder of ours (rmdir fails unless empty)",
    ("facechain/io.py", "tmp_path.unlink()"): "the temporary file atomic_path made itself (mkstemp)",
    ("facechain/stylize/methods/diffstyle.py", "handle.remove()"): "a torch hook handle, not a file",
    ("facechain/adapters/repcontrolnet/model.py", "self._handle.remove()"): "a torch hook handle, not a file",
    ("facechain/adapters/feedface/model.py", "h.remove()"): "torch hook handles, not files",
    ("facechain/adapters/feedface/train.py", "hooks.remove()"): "FeedFaceHooks.remove: torch hook handles",
    ("facechain/train/loop.py", "od.remove(["): "OutputDir.remove: recorded outputs, checksum verified",
    ("facechain/train/checkpoint.py", "od.remove(od.owned_under("): "OutputDir.remove: recorded checkpoint files",
}
DELETE_RE = re.compile(r"\.unlink\(|rmtree\(|os\.remove\(|\.remove\(|\.rmdir\(|os\.rmdir\(|os\.removedirs\(")


@pytest.mark.unit
def test_every_deletion_in_the_package_is_covered_by_the_ownership_rule():
    found = set()
    for path in sorted((REPO / "facechain").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0].strip()
            if DELETE_RE.search(code) and not code.startswith(("def ", '"', "'")):
                found.add((rel, code))
    unexplained = {f for f in found if not any(f[0] == a and a_code in f[1] for a, a_code in ALLOWED_DELETIONS)}
    assert not unexplained, f"deletions not covered by the ownership rule (add to ALLOWED_DELETIONS with a reason): {unexplained}"
    stale = {k for k in ALLOWED_DELETIONS if not any(k[0] == f[0] and k[1] in f[1] for f in found)}
    assert not stale, f"ALLOWED_DELETIONS lists places that no longer delete: {stale}"


# --------------------------------------------------------------------------- found by an adversarial review

KILL_AFTER_FIRST_MOVE = """
import os, sys
from facechain.outputs import OutputDir
od = OutputDir.acquire(sys.argv[1], sys.argv[2])
stage = od.stage()
for name, data in [("000.png", b"new0"), ("001.png", b"new1"), ("report.json", b'{"run": 2}')]:
    (stage / name).write_bytes(data)
real = os.replace
def replace(a, b):
    real(a, b)
    os._exit(9)
os.replace = replace
od.commit(stage)
"""


def _killed_commit(out: Path, command: str = "preprocess") -> None:
    with OutputDir.open(out, command) as od:
        commit_files(od, {"000.png": b"old0", "001.png": b"old1", "002.png": b"old2", "report.json": b'{"run": 1}'})
    assert subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_MOVE, str(out), command]).returncode == 9


@pytest.mark.unit
def test_a_refused_run_of_another_command_leaves_a_half_done_commit_alone(tmp_path):
    out = tmp_path / "out"
    _killed_commit(out)
    with pytest.raises(InputError, match="did not write"):
        OutputDir.acquire(out, "generate")
    with OutputDir.open(out, "generate", allow_other_files=True) as od:  # even an allowed run keeps its staging
        commit_files(od, {"g_00.png": b"g"})
    with OutputDir.open(out, "preprocess", allow_other_files=True) as od:
        assert od.pending is None and sorted(od.files) == ["000.png", "001.png", "report.json"]
    assert [(out / n).read_bytes() for n in ("000.png", "001.png", "report.json")] == [b"new0", b"new1", b'{"run": 2}']
    assert not (out / "002.png").exists()


@pytest.mark.unit
def test_completing_a_commit_never_overwrites_what_the_user_put_there_meanwhile(tmp_path):
    out = tmp_path / "out"
    _killed_commit(out)
    (out / "001.png").write_bytes(b"the user's own 001")  # after the kill, before the next run
    with pytest.raises(InputError, match=r"did not write \(001.png\)"):  # completed as far as it can, then refused
        OutputDir.acquire(out, "preprocess")
    with OutputDir.open(out, "preprocess", allow_other_files=True) as od:
        assert od.pending is None
        assert "001.png" not in od.files and od.owns("000.png") and od.owns("002.png")  # the old 002 stays ours
    assert (out / "001.png").read_bytes() == b"the user's own 001"
    assert (out / "002.png").read_bytes() == b"old2"  # the previous outputs were kept: the new set is incomplete


@pytest.mark.unit
def test_a_commit_that_cannot_move_files_is_a_clear_error_and_completes_later(tmp_path, monkeypatch):
    from facechain.outputs import OutputCommitError

    out = tmp_path / "out"
    with OutputDir.open(out, "generate") as od:
        commit_files(od, {"a_00.png": b"old"})
    real = os.replace

    def denied(a, b):
        if STATE_DIR in Path(b).parts:  # facechain's own record writes still work
            return real(a, b)
        raise PermissionError(13, "Permission denied", str(b))

    monkeypatch.setattr(os, "replace", denied)
    with OutputDir.open(out, "generate") as od:
        with pytest.raises(OutputCommitError, match="could not move b_00.png .*Permission denied.*rerun"):
            commit_files(od, {"b_00.png": b"new"})
    assert (out / "a_00.png").read_bytes() == b"old"
    monkeypatch.setattr(os, "replace", real)
    with OutputDir.open(out, "generate") as od:
        assert sorted(od.files) == ["b_00.png"]
    assert not (out / "a_00.png").exists() and (out / "b_00.png").read_bytes() == b"new"


@pytest.mark.unit
@pytest.mark.parametrize("record", [
    b"\xff\xfe\x00garbage",
    b'{"files": {}, "pending": "x"}',
    b'{"files": {}, "pending": {"stage": "staging/x"}}',
    b'{"files": {}, "pending": {"stage": "../..", "into": "", "files": {}, "delete": {}, "replace": false}}',
    b'{"files": {"../precious.txt": {"size": 1, "sha256": "00"}}, "pending": null}',
    b'{"files": {"/etc/hostname": {"size": 1, "sha256": "00"}}, "pending": null}',
])
def test_a_damaged_or_hostile_record_is_a_clear_error_and_nothing_is_touched(tmp_path, record):
    out = tmp_path / "victim" / "out"
    (out / STATE_DIR).mkdir(parents=True)
    (out / STATE_DIR / "preprocess.json").write_bytes(record)
    (tmp_path / "victim" / "precious.txt").write_text("x")
    with pytest.raises(InputError, match=r"preprocess.json \(facechain's record .*\) is damaged"):
        OutputDir.acquire(out, "preprocess")
    assert (tmp_path / "victim" / "precious.txt").read_text() == "x"


@pytest.mark.unit
def test_links_in_the_state_folder_are_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    out = tmp_path / "out"
    (out / STATE_DIR).mkdir(parents=True)
    (out / STATE_DIR / "lock").symlink_to(victim)
    with pytest.raises(InputError, match="lock file"):
        OutputDir.acquire(out, "generate")
    assert victim.read_text() == "mine"
    out2 = tmp_path / "out2"
    out2.mkdir()
    (out2 / STATE_DIR).symlink_to(tmp_path)
    with pytest.raises(InputError, match="not facechain's own folder"):
        OutputDir.acquire(out2, "generate")


@pytest.mark.unit
def test_a_log_is_ours_while_it_starts_with_what_we_recorded(tmp_path):
    out = tmp_path / "out"
    with OutputDir.open(out, "train") as od:
        (out / "train_log.jsonl").write_text('{"step": 1}\n')
        od.record(["train_log.jsonl"], logs=("train_log.jsonl",))
        with open(out / "train_log.jsonl", "a") as fh:  # appended after the record: a kill before the next record
            fh.write('{"step": 2}\n')
        assert od.owns("train_log.jsonl")
        (out / "train_log.jsonl").write_text("the user's own notes\n")
        assert not od.owns("train_log.jsonl")
        assert od.remove(["train_log.jsonl"]) == 0
    assert (out / "train_log.jsonl").read_text() == "the user's own notes\n"


@pytest.mark.unit
def test_a_record_of_the_first_format_is_still_read(tmp_path):
    """Records written by facechain's first output-record format kept a log as {size, sha256: null}:
    such a folder keeps working (the log is ours, and so are the other recorded files)."""
    import hashlib
    import json

    out = tmp_path / "out"
    (out / STATE_DIR).mkdir(parents=True)
    (out / "train_log.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    (out / "w.safetensors").write_bytes(b"weights")
    files = {"train_log.jsonl": {"size": 12, "sha256": None},
             "w.safetensors": {"size": 7, "sha256": hashlib.sha256(b"weights").hexdigest()}}
    (out / STATE_DIR / "train.json").write_text(json.dumps({"files": files, "pending": None}))
    with OutputDir.open(out, "train") as od:
        assert od.owns("train_log.jsonl") and od.owns("w.safetensors") and od.other_files() == []
        od.record(["train_log.jsonl"], logs=("train_log.jsonl",))  # re-recorded in today's format
    saved = json.loads((out / STATE_DIR / "train.json").read_text())["files"]["train_log.jsonl"]
    assert saved["log"] is True and isinstance(saved["sha256"], str)
    # a first-format log entry whose file is now something else (not our JSON lines) is not ours
    out2 = tmp_path / "out2"
    (out2 / STATE_DIR).mkdir(parents=True)
    (out2 / "train_log.jsonl").write_text("the user's own notes, longer than the log was\n")
    (out2 / STATE_DIR / "train.json").write_text(json.dumps({"files": {"train_log.jsonl": {"size": 12, "sha256": None}},
                                                             "pending": None}))
    with OutputDir.open(out2, "train", allow_other_files=True) as od:
        assert not od.owns("train_log.jsonl") and od.remove(["train_log.jsonl"]) == 0
    assert (out2 / "train_log.jsonl").read_text().startswith("the user's own notes")


def test_reading_a_folder_mid_run_or_mid_commit_is_refused(tmp_path, hold_lock):
    from facechain.outputs import check_settled

    out = tmp_path / "out"
    proc = hold_lock(out, "preprocess")
    with pytest.raises(OutputInUseError, match=f"in use by pid {proc.pid}"):
        check_settled(out, "preprocess", "processed folder")
    proc.kill()
    proc.wait()
    check_settled(out, "preprocess", "processed folder")  # free and settled
    _killed_commit(tmp_path / "half")
    with pytest.raises(InputError, match="stopped while it was replacing its outputs"):
        check_settled(tmp_path / "half", "preprocess", "processed folder")


def test_a_checkpoint_commit_killed_halfway_is_completed(tmp_path):
    """Checkpoints are assembled in tmp/ (every process writes its part there) and committed into
    checkpoints/step-N: a kill in the middle is completed by the next run, which can then resume."""
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import os
        from facechain.outputs import OutputDir
        od = OutputDir.acquire({str(out)!r}, "train")
        stage = od.tmp() / "checkpoint-step-000002"
        stage.mkdir()
        for name in ("lora.safetensors", "optimizer.safetensors", "state.json"):
            (stage / name).write_bytes(name.encode())
        real = os.replace
        def replace(a, b):
            real(a, b)
            os._exit(9)
        os.replace = replace
        od.commit(stage, replace=False, into="checkpoints/step-000002")
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    with OutputDir.open(out, "train") as od:
        assert od.pending is None and len(od.owned_under("checkpoints/step-000002")) == 3
    assert (out / "checkpoints" / "step-000002" / "state.json").read_bytes() == b"state.json"


@pytest.mark.unit
def test_a_commit_completed_without_every_file_leaves_the_folder_unsettled(tmp_path):
    from facechain.outputs import check_settled

    out = tmp_path / "out"
    _killed_commit(out)
    (out / "001.png").write_bytes(b"the user's")
    with OutputDir.open(out, "preprocess", allow_other_files=True):
        pass
    with pytest.raises(InputError, match="stopped while it was replacing its outputs"):
        check_settled(out, "preprocess", "processed folder")
    with OutputDir.open(out, "preprocess", allow_other_files=True) as od:  # a complete run settles it again
        commit_files(od, {"000.png": b"a", "report.json": b"{}"})
    check_settled(out, "preprocess", "processed folder")


@pytest.mark.unit
def test_linked_staging_folders_and_linked_record_paths_are_never_followed(tmp_path):
    victim = tmp_path / "victim"
    (victim / "a").mkdir(parents=True)
    (victim / "a" / "secret.txt").write_text("precious")
    for sub in ("staging", "tmp"):
        out = tmp_path / f"out_{sub}"
        (out / STATE_DIR).mkdir(parents=True)
        (out / STATE_DIR / sub).symlink_to(victim)
        with pytest.raises(InputError, match="not facechain's own folder"):
            OutputDir.acquire(out, "preprocess")
    assert (victim / "a" / "secret.txt").read_text() == "precious"
    # a record entry that leads through a linked folder is not ours to delete
    out = tmp_path / "out"
    with OutputDir.open(out, "preprocess") as od:
        commit_files(od, {"000.png": b"x"})
    (out / "link").symlink_to(victim)
    rec = json.loads((out / STATE_DIR / "preprocess.json").read_text())
    import hashlib

    rec["files"]["link/a/secret.txt"] = {"size": 8, "sha256": hashlib.sha256(b"precious").hexdigest(), "log": False}
    (out / STATE_DIR / "preprocess.json").write_text(json.dumps(rec))
    with OutputDir.open(out, "preprocess", allow_other_files=True) as od:
        assert not od.owns("link/a/secret.txt")
        commit_files(od, {"000.png": b"y"})
    assert (victim / "a" / "secret.txt").read_text() == "precious"


@pytest.mark.unit
def test_a_log_rewrite_killed_before_the_write_leaves_the_log_ours(tmp_path, monkeypatch):
    import facechain.io

    out = tmp_path / "out"
    with OutputDir.open(out, "train") as od:
        (out / "train_log.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
        od.record(["train_log.jsonl"], logs=("train_log.jsonl",))

        def killed(*a, **k):
            raise KeyboardInterrupt

        monkeypatch.setattr(facechain.io, "write_bytes", killed)
        with pytest.raises(KeyboardInterrupt):
            od.rewrite_log("train_log.jsonl", b'{"step": 1}\n')
    with OutputDir.open(out, "train") as od:
        assert od.owns("train_log.jsonl")


@pytest.mark.unit
def test_a_folder_being_read_cannot_be_replaced(tmp_path):
    from facechain.outputs import hold_for_reading

    out = tmp_path / "p"
    with OutputDir.open(out, "preprocess") as od:
        commit_files(od, {"000.png": b"x"})
    reading = hold_for_reading(out, "preprocess", "processed folder")
    try:
        with pytest.raises(OutputInUseError, match="is in use by"):
            OutputDir.acquire(out, "preprocess")
    finally:
        reading.close()
    with OutputDir.open(out, "preprocess"):
        pass
