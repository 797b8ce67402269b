"""Run untrusted generated code in a subprocess with limits, and score it with unbiased pass@k (@sec-evaluation-code).

Layers: a fresh temp working directory, a clean environment, `python -I` (no user site, no env vars),
rlimits on CPU time, address space, file size and process count (set by the guard before the program
runs; the process count limit does not bind root), a wall-clock timeout that kills the whole
process group, and an in-process guard installed before the program runs that disables sockets,
process creation and file-system writes/deletes outside the temp directory. The guard is a seatbelt,
not a jail: a determined attacker in the same interpreter can get around Python-level patches, so
production code-execution services add OS isolation (containers, seccomp, gVisor, nsjail).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GUARD = r'''
import builtins, io, os, resource, shutil, socket, sys, _socket
ROOT = os.path.realpath(sys.argv[1])
_MB = 1024 * 1024
_cpu, _mem, _fsize, _nproc = (int(x) for x in sys.argv[3:7])
for _lim, _val in ((resource.RLIMIT_CPU, _cpu), (resource.RLIMIT_AS, _mem * _MB),
                   (resource.RLIMIT_FSIZE, _fsize * _MB), (resource.RLIMIT_NPROC, _nproc), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(_lim, (_val, _val))

def _inside(path):
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.fsdecode(path))
    return p == ROOT or p.startswith(ROOT + os.sep)

def _deny(what):
    def blocked(*args, **kwargs):
        raise PermissionError(f"sandbox: {what} is disabled")
    return blocked

class _NoSocket:
    def __init__(self, *args, **kwargs):
        raise PermissionError("sandbox: network access is disabled")

for mod in (socket, _socket):
    mod.socket = _NoSocket
    for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname"):
        if hasattr(mod, name):
            setattr(mod, name, _deny("network access"))

_open = builtins.open
def _guarded_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and not _inside(file):
        raise PermissionError(f"sandbox: writing outside the temp dir is disabled: {file}")
    return _open(file, mode, *args, **kwargs)
builtins.open = io.open = _guarded_open

_os_open = os.open
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
def _guarded_os_open(path, flags, *args, **kwargs):
    if flags & _WRITE and not _inside(path):
        raise PermissionError(f"sandbox: writing outside the temp dir is disabled: {path}")
    return _os_open(path, flags, *args, **kwargs)
os.open = _guarded_os_open

def _path_guard(fn, n_paths=1):
    def guarded(*args, **kwargs):
        for p in args[:n_paths]:
            if not _inside(p):
                raise PermissionError(f"sandbox: {fn.__name__} outside the temp dir is disabled: {p}")
        return fn(*args, **kwargs)
    return guarded

for name in ("remove", "unlink", "rmdir", "mkdir", "makedirs", "removedirs", "truncate", "chmod", "chown", "utime"):
    setattr(os, name, _path_guard(getattr(os, name)))
for name in ("rename", "replace", "link", "symlink"):
    setattr(os, name, _path_guard(getattr(os, name), 2))
shutil.rmtree = _path_guard(shutil.rmtree)
shutil.move = _path_guard(shutil.move, 2)

for name in ("fork", "forkpty", "vfork", "system", "popen", "kill", "killpg", "execv", "execve", "execvp",
             "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnl", "posix_spawn",
             "posix_spawnp", "setuid", "putenv", "chroot"):
    if hasattr(os, name):
        setattr(os, name, _deny(f"os.{name}"))
import subprocess, multiprocessing
subprocess.Popen = _deny("subprocess")
multiprocessing.Process.start = _deny("multiprocessing")
sys.modules["ctypes"] = None  # no calling libc behind the guard's back
sys.modules["_ctypes"] = None

del builtins, io, resource, shutil, socket, _socket, subprocess, multiprocessing
__src = sys.argv[2]
sys.argv = [__src]
with _open(__src) as __f:
    __code = compile(__f.read(), __src, "exec")
del __f
exec(__code, {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run."""

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_processes: int = 32
    max_output_bytes: int = 64_000

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb", "file_size_mb", "max_processes", "max_output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: status 'passed', 'failed' or 'timeout', plus its exit code and output."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(source: str, limits: Limits = Limits()) -> ExecResult:
    """Execute `source` as a script in a fresh temp dir under the guard; exit code 0 means passed."""
    workdir = Path(tempfile.mkdtemp(prefix="llmbook-sandbox-"))
    try:
        (workdir / "guard.py").write_text(GUARD, encoding="utf-8")
        (workdir / "program.py").write_text(source, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(workdir / "guard.py"), str(workdir), str(workdir / "program.py"),
             str(limits.cpu_s), str(limits.memory_mb), str(limits.file_size_mb), str(limits.max_processes)],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=limits.timeout_s)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: children cannot outlive the run
            out, err = proc.communicate()
            status = "timeout"
        cap = limits.max_output_bytes
        return ExecResult(status, proc.returncode, out[:cap].decode(errors="replace"), err[-cap:].decode(errors="replace"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_many(sources: Sequence[str], limits: Limits = Limits(), workers: int = 2) -> list[ExecResult]:
    """Run programs concurrently (each in its own subprocess), results in input order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), stably."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def humaneval_program(problem: dict, completion: str) -> str:
    """The program HumanEval runs: prompt + completion + the test module + check(entry_point)."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def mbpp_program(problem: dict, code: str) -> str:
    """The program MBPP runs: setup code, the candidate, then its assert statements."""
    tests = "\n".join(problem["test_list"])
    return f"{problem.get('test_setup_code', '')}\n{code}\n\n{tests}\n"


def estimate_pass_at_k(correct_per_problem: Sequence[Sequence[bool]], k: int) -> float:
    """Mean unbiased pass@k over problems, each with its own list of per-sample outcomes."""
    if not correct_per_problem:
        raise ValueError("no problems to score")
    return float(np.mean([pass_at_k(len(s), sum(s), k) for s in correct_per_problem]))
