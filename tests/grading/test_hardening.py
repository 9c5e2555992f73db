"""Issue 19: the holes a hostile audit found in `mtlkit grade`, each reproduced and seen to fail.

The attacks a submission carries out itself are in the corpus (corpus.py, graded by tests/test_grading.py); here are
the ones that need the grader's own machinery: a sandbox that fails to start, the gradebook rewritten while children
run, Python installed under /tmp, huge files, the collector's timestamps, the per-assignment hidden splits, and the
submissions folder's top level.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from corpus import AFFINE, FIXTURE, SOFTMAX  # noqa: E402

from mtlkit.cli import main as cli_main  # noqa: E402
from mtlkit.grading import grade as grade_module  # noqa: E402
from mtlkit.grading import sandbox  # noqa: E402
from mtlkit.grading.grade import GRADER_ERROR, grade, make_groups, prepare_job  # noqa: E402
from mtlkit.grading.sandbox import Limits, bwrap_works, detect_mode  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "assignments" / "source"
LIMITS = Limits(timeout_s=25.0, memory_mb=1024, output_kb=64, nproc=16)
ISOLATING = [m for m, works in (("namespaces", detect_mode() == "namespaces"), ("bwrap", bwrap_works())) if works]


def _notebook(cells: dict[str, str]) -> dict:
    nb = json.loads((FIXTURE / "PSX_tiny" / "PSX_tiny.ipynb").read_text())
    for cell in nb["cells"]:
        gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if gid in cells:
            cell["source"] = cells[gid]
    return nb


def _submit(subs: Path, student: str, cells: dict[str, str] | None = None, **files: bytes) -> Path:
    folder = subs / student
    folder.mkdir(parents=True)
    (folder / "PSX_tiny.ipynb").write_text(json.dumps(_notebook(cells or {"softmax": SOFTMAX, "affine": AFFINE})))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _rows(path: Path) -> dict[str, dict]:
    with path.open(newline="") as f:
        return {r["student_id"]: r for r in csv.DictReader(f)}


# ------------------------------------------------------------------------------------------------ (1) job spec
def test_the_job_spec_is_never_a_file_a_submission_could_replace(tmp_path):
    """The audit's job.json beside the stubs scored 12/12: the spec now reaches the child on its standard input,
    the grader's names are refused with a note, and a submission's file is only ever created, never written over."""
    from mtlkit.grading.assignment import load_assignment

    assignment = load_assignment("PSX_tiny", FIXTURE)
    groups = make_groups(assignment, None)
    folder = _submit(tmp_path / "subs", "eve", {"softmax": "raise NotImplementedError()"},
                     **{"job.json": b'{"cells": []}', "inputs": b"x", "weights.npy": b"\x93NUMPY"})
    (folder / "deep").mkdir()
    (folder / "deep" / "weights.npy").write_bytes(b"second")
    sub = grade_module._submission(folder, "PSX_tiny")
    job, info = prepare_job(assignment, sub, groups, tmp_path)
    assert not (job / "job.json").exists() and (job / "weights.npy").read_bytes() == b"\x93NUMPY"
    spec = json.loads(info["spec"])
    assert [label for label, _ in spec["cells"]][:2] == ["parameters", "setup"] and len(spec["groups"]) == 2
    notes = " ".join(sub.notes)
    assert "'job.json' was not used (the grader uses that name itself" in notes
    assert "'deep/weights.npy' was not used (another file of the same name" in notes
    assert "'inputs' was not used (allowed:" in notes  # (no suffix; a folder of that name is the grader's)
    with pytest.raises(FileExistsError):
        grade_module._copy_new(folder / "weights.npy", job / "weights.npy", 2**20)


# ------------------------------------------------------------------------------------------------ (2) start failures
def _fake_unshare(tmp_path: Path, failures: int) -> Path:
    """An ``unshare`` whose mounts fail the first ``failures`` times (as when the gradebook vanished between the
    existence check and the bind), then the real one."""
    count = tmp_path / "starts"
    script = tmp_path / "unshare"
    real = shutil.which("unshare") or "/usr/bin/unshare"
    script.write_text(f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}
if [ "$n" -lt {failures} ]; then echo "mount: {tmp_path}/gradebook.csv: No such file or directory" >&2; exit 97; fi
exec {real} "$@"
""")
    script.chmod(0o755)
    return script


def test_a_sandbox_that_cannot_start_is_retried_then_reported_as_the_graders_fault(tmp_path, monkeypatch, capsys):
    _submit(tmp_path / "subs", "ann")
    out = tmp_path / "book" / "gb.csv"
    monkeypatch.setattr(sandbox, "_unshare", lambda: str(_fake_unshare(tmp_path, failures=99)))
    seen = []
    result = grade("PSX_tiny", tmp_path / "subs", out, source=FIXTURE, limits=LIMITS, mode="namespaces",
                   progress=seen.append)[0]
    assert result["status"] == GRADER_ERROR and result["score"] == 0.0
    assert "could not start (3 tries; a grader problem, not the submission's" in result["error"]
    assert "No such file or directory" in result["error"]
    assert _rows(out)["ann"]["status"] == GRADER_ERROR
    # never reused: the next run grades ann again (here: fails again), and the CLI says so and exits 1
    seen.clear()
    code = cli_main(["grade", "PSX_tiny", str(tmp_path / "subs"), "--out", str(out), "--source", str(FIXTURE),
                     "--sandbox", "namespaces", "--timeout", "25"])
    printed = capsys.readouterr().out
    assert code == 1 and "could not start for ann" in printed and "run the same command again" in printed


@pytest.mark.skipif(detect_mode() != "namespaces", reason="needs a working unshare (namespaces mode)")
def test_a_sandbox_that_fails_to_start_once_is_graded_on_the_next_try(tmp_path, monkeypatch):
    _submit(tmp_path / "subs", "ann")
    monkeypatch.setattr(sandbox, "_unshare", lambda: str(_fake_unshare(tmp_path, failures=1)))
    result = grade("PSX_tiny", tmp_path / "subs", tmp_path / "gb.csv", source=FIXTURE, limits=LIMITS,
                   mode="namespaces")[0]
    assert result["status"] == "graded" and result["score"] == 4.0, result["error"] + result["log"][-2000:]
    assert (tmp_path / "starts").read_text().strip() == "2"


# ------------------------------------------------------------------------------------------------ (2, 3) gradebook
def test_the_gradebook_is_never_rewritten_while_a_child_runs(tmp_path, monkeypatch):
    """The audit saw a child's mounts fail, and a child read the live gradebook, because the parent replaced the
    gradebook after each student while others ran (--jobs 2). It is now written once no child runs."""
    for student in ("ann", "bob", "cat"):
        _submit(tmp_path / "subs", student)
    (tmp_path / "subs" / "dan").mkdir()  # an error row, finished before any child starts
    running, calls, lock = [0], [], threading.Lock()
    real_run, real_write = grade_module.run_child, grade_module.write_gradebook

    def counted_run(*args, **kwargs):
        with lock:
            running[0] += 1
        try:
            return real_run(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    def watched_write(*args, **kwargs):
        calls.append(running[0])
        return real_write(*args, **kwargs)

    monkeypatch.setattr(grade_module, "run_child", counted_run)
    monkeypatch.setattr(grade_module, "write_gradebook", watched_write)
    results = grade("PSX_tiny", tmp_path / "subs", tmp_path / "gb.csv", source=FIXTURE, limits=LIMITS, jobs=2,
                    mode=None if ISOLATING else "rlimits")
    assert [r["score"] for r in results] == [4.0, 4.0, 4.0, 0.0] and calls == [0]


@pytest.mark.parametrize("mode", ISOLATING or ["namespaces"])
def test_an_existing_gradebook_and_feedback_are_out_of_reach(tmp_path, mode):
    """Rerun beside last run's gradebook (names and e-mails from the roster) and feedback: a new submission that
    looks for them, and for other gradebooks in the same folder, finds nothing."""
    if mode not in ISOLATING:
        pytest.skip("neither namespaces nor bwrap works here")
    subs, out = tmp_path / "subs", tmp_path / "book" / "PS1.csv"
    _submit(subs, "ann")
    (subs / "students.csv").write_text("id,last_name,first_name,email\nann,Lovelace,Ada,ada@example.org\n")
    grade("PSX_tiny", subs, out, source=FIXTURE, limits=LIMITS, mode=mode)
    (out.parent / "PS0.csv").write_text("student_id,score\nann,OTHER-GRADEBOOK\n")
    snoop = SOFTMAX + f'''import glob, os
for _p in glob.glob({json.dumps(str(out.parent))} + "/**", recursive=True):
    if os.path.isfile(_p):
        try:
            print("SEEN", _p, open(_p).read()[:500])
        except OSError as exc:
            print("refused", _p, exc)
'''
    _submit(subs, "eve", {"softmax": snoop, "affine": AFFINE})
    result = {r["student_id"]: r for r in grade("PSX_tiny", subs, out, source=FIXTURE, limits=LIMITS, mode=mode)}
    assert result["eve"]["score"] == 4.0, result["eve"]["log"][-2000:]
    log = result["eve"]["log"]
    assert "SEEN" not in log and "ada@example.org" not in log and "OTHER-GRADEBOOK" not in log, log[-2000:]
    assert _rows(out)["ann"]["email"] == "ada@example.org"


# ------------------------------------------------------------------------------------------------ (5) /tmp
@pytest.mark.parametrize("mode", ISOLATING or ["namespaces"])
def test_a_private_tmp_also_where_python_lives_under_tmp(tmp_path, monkeypatch, mode):
    """With Python (or the checkout) under /tmp the namespaces mode used to keep the host's /tmp: other runs'
    gradebooks were readable and files written there stayed. Now /tmp is private in every isolating mode, with
    the needed folders under it bound back read-only (and so are /var/tmp and /dev/shm)."""
    if mode not in ISOLATING:
        pytest.skip("neither namespaces nor bwrap works here")
    fake_python = Path(tempfile.mkdtemp(prefix="mtlkit-fake-python-", dir="/tmp"))
    planted = Path(tempfile.mkdtemp(prefix="mtlkit-planted-", dir="/tmp"))
    token = os.urandom(6).hex()
    left = [Path(d) / f"mtlkit-left-{token}" for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(d)]
    planted_var = Path(f"/var/tmp/mtlkit-planted-{token}")
    try:
        for folder in (fake_python, planted):
            folder.chmod(0o755)
        (fake_python / "lib.txt").write_text("NEEDED")
        (fake_python / "lib.txt").chmod(0o644)
        (planted / "gradebook.csv").write_text("student_id\nPLANTED-ROW\n")
        (planted / "gradebook.csv").chmod(0o644)
        planted_var.write_text("PLANTED-ROW\n")
        planted_var.chmod(0o644)
        real_needed = sandbox._needed
        monkeypatch.setattr(sandbox, "_needed", lambda: real_needed() | {fake_python})
        code = SOFTMAX + f'''import glob
for _p in glob.glob("/tmp/mtlkit-planted-*/*") + glob.glob("/var/tmp/mtlkit-planted-*"):
    print("TMP-SEEN", _p, open(_p).read())
print("KEPT", open({json.dumps(str(fake_python / "lib.txt"))}).read())
try:
    open({json.dumps(str(fake_python / "new.txt"))}, "w").write("x")
    print("WROTE-INTO-PYTHON")
except OSError:
    pass
for _p in {json.dumps([str(p) for p in left])}:
    open(_p, "w").write("left behind")
'''
        _submit(tmp_path / "subs", "eve", {"softmax": code, "affine": AFFINE})
        result = grade("PSX_tiny", tmp_path / "subs", tmp_path / "gb.csv", source=FIXTURE, limits=LIMITS,
                       mode=mode)[0]
        log = result["log"]
        assert result["score"] == 4.0 and "KEPT NEEDED" in log, log[-3000:]
        assert "TMP-SEEN" not in log and "PLANTED-ROW" not in log and "WROTE-INTO-PYTHON" not in log, log[-3000:]
        assert not [p for p in left if p.exists()] and not (fake_python / "new.txt").exists()
    finally:
        shutil.rmtree(fake_python, ignore_errors=True)
        shutil.rmtree(planted, ignore_errors=True)
        for p in [*left, planted_var]:
            p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ (6) sizes
def test_huge_files_are_refused_before_anything_reads_them(tmp_path):
    """A 2 GiB sparse file beside a notebook and a 1 GiB sparse notebook: each is named in a feedback line, the
    run goes on for everyone, and the grader's memory never holds them (the audit: 35 -> 802 MiB)."""
    import tracemalloc

    subs = tmp_path / "subs"
    ann = _submit(subs, "ann", **{"ok.npy": b"\x93NUMPY small"})
    with (ann / "big.npy").open("wb") as f:
        f.truncate(2 * 2**30)
    with (subs / "bob.ipynb").open("wb") as f:
        f.truncate(2**30)
    _submit(subs, "cat")
    tracemalloc.start()
    try:
        results = {r["student_id"]: r for r in grade("PSX_tiny", subs, tmp_path / "gb.csv", source=FIXTURE,
                                                     limits=LIMITS, mode="rlimits")}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"the grader held {peak / 2**20:.0f} MiB"
    assert results["ann"]["score"] == 4.0 and results["cat"]["score"] == 4.0
    assert any("'big.npy' was not used (2048.0 MiB: over the limit" in n for n in results["ann"]["notes"])
    assert results["bob"]["status"] == "error" and "larger than the 20 MiB limit" in results["bob"]["error"]


# ------------------------------------------------------------------------------------------------ (7) timestamps
def test_timestamps_come_from_the_collector_and_csv_cells_stay_text(tmp_path):
    from mtlkit.grading.feedback import safe_cell
    from mtlkit.grading.grade import read_timestamps

    subs = tmp_path / "subs"
    ann = _submit(subs, "ann", **{"timestamp.txt": b"=HYPERLINK(\"http://x\",\"1999-01-01\")"})
    _submit(subs, "bob")
    os.utime(ann / "PSX_tiny.ipynb", (1_700_000_000, 1_700_000_000))
    record = tmp_path / "times.csv"
    record.write_text("student_id,timestamp\nbob,2026-12-07T21:30:00+01:00\n")
    results = {r["student_id"]: r for r in grade("PSX_tiny", subs, tmp_path / "gb.csv", source=FIXTURE,
                                                 limits=LIMITS, mode="rlimits", timestamps=read_timestamps(record))}
    assert results["ann"]["timestamp"] == "2023-11-14 22:13:20"  # the collected notebook's modification time
    assert results["bob"]["timestamp"] == "2026-12-07 20:30:00"  # the instructor's record, in UTC
    assert "HYPERLINK" not in (tmp_path / "gb.csv").read_text()
    record.write_text("ann,yesterday\n")
    with pytest.raises(ValueError, match=r"times.csv:1: 'yesterday' is not an ISO 8601 time"):
        read_timestamps(record)
    assert [safe_cell(v) for v in ("=1+1", "+1", "-x", "@A1", "\tx", "ok", -2.5, 3)] == \
        ["'=1+1", "'+1", "'-x", "'@A1", "'\tx", "ok", -2.5, 3]


# ------------------------------------------------------------------------------------------------ (8) hidden splits
def test_hidden_splits_are_per_assignment_and_64_bit():
    """HMAC-SHA256(secret, assignment) cut to 64 bits (pinned): PS1's hidden images are not PS5's."""
    from mtlkit.grading.assignment import load_assignment
    from mtlkit.grading.hidden import HiddenSplit, split_seed

    seeds = {name: split_seed(name, "s3cret") for name in ("PS1_joint", "PS5_leaderboard")}
    # the first 8 bytes of HMAC-SHA256(key=b"s3cret", msg=b"mtlkit-hidden-split:<assignment>")
    assert seeds == {"PS1_joint": 0x05E0167A18196B62, "PS5_leaderboard": 0xA6419DCE0A61B2D8}
    assert split_seed("PS1_joint", "s3cret!") != seeds["PS1_joint"]
    assert max(split_seed(f"PS{k}", "x").bit_length() for k in range(16)) > 60  # not a 32-bit seed
    for name in ("PS1_joint", "PS5_leaderboard"):
        splits = {p.inputs.__self__ for p in load_assignment(name, REAL).probes
                  if isinstance(getattr(p.inputs, "__self__", None), HiddenSplit)}
        assert [s.assignment for s in splits] == [name], name  # both problem sets use the shared code


def test_ps1_and_ps5_hidden_images_differ(monkeypatch):
    from mtlkit.grading.hidden import HiddenSplit

    monkeypatch.setenv("MTLKIT_PRESET", "unit")
    monkeypatch.setenv("MTLKIT_GRADING_SECRET", "s3cret")
    thresholds = {"unit": ("valid", None, None)}
    ps1 = HiddenSplit("PS1_joint", thresholds).hidden_inputs(None)["images"]
    ps5 = HiddenSplit("PS5_leaderboard", thresholds).hidden_inputs(None)["images"]
    assert ps1.shape == ps5.shape and not np.allclose(ps1, ps5)
    monkeypatch.delenv("MTLKIT_GRADING_SECRET")
    with pytest.raises(RuntimeError, match="needs the instructor's secret"):
        HiddenSplit("PS1_joint", thresholds).hidden_inputs(None)


# ------------------------------------------------------------------------------------------------ (9) the folder
def test_an_empty_or_unusable_submissions_folder_is_an_error(tmp_path, capsys):
    args = ["--out", str(tmp_path / "gb.csv"), "--source", str(FIXTURE)]
    (tmp_path / "empty").mkdir()
    (tmp_path / "hidden_only").mkdir()
    (tmp_path / "hidden_only" / ".DS_Store").write_bytes(b"")
    (tmp_path / "a_file").write_text("x")
    for folder, message in (("empty", "holds no submission"), ("hidden_only", "found only .DS_Store"),
                            ("a_file", "is not a folder"), ("missing", "does not exist")):
        assert cli_main(["grade", "PSX_tiny", str(tmp_path / folder), *args]) == 2, folder
        err = capsys.readouterr().err
        assert err.startswith("mtlkit: error: submissions folder") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "gb.csv").exists()


def test_every_top_level_entry_gets_a_row_or_a_listed_reason(tmp_path):
    subs = tmp_path / "subs"
    _submit(subs, "ann")
    (subs / "dave.py").write_text("print('my answers')\n")  # the audit's stray file: dave disappeared
    _submit(subs, "eve")
    (subs / "eve.ipynb").write_text(json.dumps(_notebook({})))  # two submissions for one student
    (subs / "my notes.txt").write_text("x")
    (subs / ".ipynb_checkpoints").mkdir()
    (subs / "students.csv").write_text("id,last_name,first_name,email\n")
    notices = []
    results = {r["student_id"]: r for r in grade("PSX_tiny", subs, tmp_path / "gb.csv", source=FIXTURE,
                                                 limits=LIMITS, mode="rlimits", notice=notices.append)}
    assert sorted(results) == ["ann", "dave", "eve"] and results["ann"]["score"] == 4.0
    assert results["dave"]["status"] == "error" and "dave.py is not a notebook: hand in dave.ipynb" in \
        results["dave"]["error"]
    assert results["eve"]["status"] == "error" and "several submissions for eve (eve.ipynb, eve/)" in \
        results["eve"]["error"]
    assert sorted(n.split(":")[0] for n in notices) == ["skipped .ipynb_checkpoints", "skipped my notes.txt",
                                                         "skipped students.csv"], notices
    assert sorted(_rows(tmp_path / "gb.csv")) == ["ann", "dave", "eve"]


def test_rlimits_is_never_chosen_silently(tmp_path, monkeypatch, capsys):
    """Where neither namespaces nor bwrap works, grading needs ``--sandbox rlimits`` by name: that mode hides
    nothing from student code."""
    _submit(tmp_path / "subs", "ann")
    monkeypatch.setattr(grade_module, "detect_mode", lambda: "rlimits")
    with pytest.raises(ValueError, match="install bubblewrap .* or pass --sandbox rlimits"):
        grade("PSX_tiny", tmp_path / "subs", tmp_path / "gb.csv", source=FIXTURE, limits=LIMITS)
    assert grade("PSX_tiny", tmp_path / "subs", tmp_path / "gb.csv", source=FIXTURE, limits=LIMITS,
                 mode="rlimits")[0]["score"] == 4.0
    # and there the secret may not sit on the command line, which any process can read
    assert cli_main(["grade", "PSX_tiny", str(tmp_path / "subs"), "--out", str(tmp_path / "gb.csv"), "--source",
                     str(FIXTURE), "--sandbox", "rlimits", "--secret-seed", "s3cret"]) == 2
    assert "pass the secret in MTLKIT_GRADING_SECRET instead of --secret-seed" in capsys.readouterr().err

