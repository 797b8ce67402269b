"""The shared file helpers: atomic writes that name the file they could not write, output-folder checks, and the
run-directory lock (two writers, a stale lock of a killed process, release on errors) (@sec-scale-checkpoint)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

from llmbook.fileio import LOCK_NAME, LockedError, atomic_write, output_dir, replace_dir, run_lock

HOLD = "import sys, time; from llmbook.fileio import run_lock; lock = run_lock(sys.argv[1]); print('locked', flush=True); time.sleep(120)"


def holder(directory) -> subprocess.Popen:
    """A second process that takes the lock of `directory` and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_atomic_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("previous")

    def full_disk(f):
        f.write("partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write() raises on a full disk

    with pytest.raises(OSError) as info:
        atomic_write(target, full_disk)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["report.json"]  # no temp file left
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, lambda f: f.write("x"))


def test_output_dir_refuses_an_existing_file(tmp_path):
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    with pytest.raises(ValueError, match=rf"--out {user_file}: exists and is not a directory"):
        output_dir(user_file)
    assert user_file.read_text() == "mine"
    assert output_dir(tmp_path / "a" / "b").is_dir() and os.listdir(tmp_path / "a" / "b") == []  # the probe is gone


def test_lock_refuses_a_second_process_then_takes_over_when_it_dies(tmp_path):
    proc = holder(tmp_path)
    try:
        with pytest.raises(LockedError, match=rf"{tmp_path} is in use by process {proc.pid}"):
            run_lock(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup: the lock file stays, the OS drops the lock
        proc.wait()
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(proc.pid)
    messages: list[str] = []
    with run_lock(tmp_path, log=messages.append):
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert messages == [f"took over the lock of {tmp_path} left by process {proc.pid}, which is no longer running"]
    assert not (tmp_path / LOCK_NAME).exists()  # released on exit


def test_deleting_the_lock_file_of_a_running_holder_does_not_let_a_second_writer_in(tmp_path):
    proc = holder(tmp_path)
    try:
        (tmp_path / LOCK_NAME).unlink()  # "a stale lock", thinks the user
        with pytest.raises(LockedError, match=rf"{tmp_path} is in use by another process \(its lock file"):
            run_lock(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    with run_lock(tmp_path):  # free again once the holder is gone
        pass
    mine = run_lock(tmp_path / "sub")
    (tmp_path / "sub" / LOCK_NAME).unlink()
    (tmp_path / "sub" / LOCK_NAME).write_text("someone else's")
    mine.release()  # removes only its own lock file
    assert (tmp_path / "sub" / LOCK_NAME).read_text() == "someone else's"


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_kept(tmp_path):
    victim = tmp_path / "bashrc"
    victim.write_text("mine")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_NAME).symlink_to(victim)  # planted in a shared folder, or left by a careless copy
    with pytest.raises(ValueError, match=rf"{tmp_path / 'run' / LOCK_NAME}: is a symbolic link"):
        run_lock(tmp_path / "run")
    assert victim.read_text() == "mine" and (tmp_path / "run" / LOCK_NAME).is_symlink()


def test_lock_is_released_when_the_work_raises(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with run_lock(tmp_path):
            raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
    proc = holder(tmp_path)  # another process can take it at once
    proc.kill()
    proc.wait()


def test_a_lock_of_an_unreachable_object_of_this_process_is_collected(tmp_path):
    lock = run_lock(tmp_path)
    cycle = [lock]
    cycle.append(cycle)  # only the garbage collector frees it
    del lock, cycle
    with run_lock(tmp_path):
        pass


def test_checkpoints_and_evaluation_do_not_reach_into_the_data_package():
    """The file helpers and the lock live in one neutral module: training and evaluation import it, not llmbook.data."""
    code = ("import sys, llmbook.train.checkpoint, llmbook.train.trainer, llmbook.eval.harness; "
            "print(sorted(m for m in sys.modules if m.startswith('llmbook.data')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    assert done.stdout.strip() == "[]"


def test_replace_dir_swaps_a_finished_folder_in_and_leaves_no_old_copy(tmp_path, monkeypatch):
    out, new = tmp_path / "run", tmp_path / ".run.tmp"
    out.mkdir()
    (out / "a.txt").write_text("old")
    new.mkdir()
    (new / "a.txt").write_text("new")
    assert replace_dir(new, out) == out and (out / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # a crash between the two renames leaves the old folder whole beside `out`, never a half-written one
    new.mkdir()
    (new / "a.txt").write_text("newer")
    real = os.replace
    calls = []

    def crash_second(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("power cut")
        real(src, dst)

    monkeypatch.setattr(os, "replace", crash_second)
    with pytest.raises(OSError, match="power cut"):
        replace_dir(new, out)
    (old,) = tmp_path.glob(".run.old-*")
    assert (old / "a.txt").read_text() == "new" and (new / "a.txt").read_text() == "newer"
