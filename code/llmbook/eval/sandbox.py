"""Run untrusted generated code in a subprocess with limits, and score it with unbiased pass@k (@sec-evaluation-code).

Two layers. The OS layer (used when `unshare` works here, see `isolation_available`): the child runs in
new user, network, PID and mount namespaces: no network interface but a downed loopback, no view of (or
signals to) processes outside, every process it starts dies with the namespace's init, and every mount is
remounted read-only except the working directory, a fresh tmpfs capped at `Limits.disk_mb`. The Python layer, always installed: `python -I`,
a clean environment, rlimits on CPU time, address space, file size and process count (the process count
does not bind root), and a guard that patches sockets, process creation and file writes outside the temp
dir. Alone (the fallback, with a loud warning) the guard is a seatbelt, not a jail: ordinary code respects
it, one line of deliberate code (`import posix`) gets around it. Output goes to files capped by the file-size
limit, and a wall-clock timeout kills the whole process tree. Each result records which isolation was used.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
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
    disk_mb: int = 64  # size of the work dir (a tmpfs) under namespace isolation; unbounded in the fallback

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb", "file_size_mb", "max_processes", "max_output_bytes",
                     "disk_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: status 'passed', 'failed' or 'timeout', its exit code, output and isolation."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    isolation: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Runs inside the namespaces: a size-capped tmpfs becomes the work dir, every other mount read-only, then exec.
_NAMESPACE_SH = r"""
work="$1"; disk_mb="$2"; shift 2
mount -t tmpfs -o size="${disk_mb}m",mode=700 tmpfs "$work" && cd "$work" || exit 97
while read -r _dev target _rest; do
  case "$target" in "$work"|/proc|/proc/*) continue ;; esac
  mount -o remount,bind,ro "$target" 2>/dev/null
done < /proc/self/mounts
touch /.llmbook-ro-probe 2>/dev/null && exit 98
exec "$@"
"""
UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc", "--mount",
           "--kill-child"]


def _command(workdir: Path, isolated: bool, argv: list[str], disk_mb: int = 64) -> list[str]:
    return [*UNSHARE, "/bin/sh", "-c", _NAMESPACE_SH, "sandbox", str(workdir), str(disk_mb), *argv] if isolated else argv


@functools.cache
def isolation_available() -> bool:
    """Whether namespaces work here (user, net, pid, mount + read-only remount); probed once per process."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    workdir = Path(tempfile.mkdtemp(prefix="llmbook-sandbox-probe-"))
    try:
        proc = subprocess.run(_command(workdir, True, [sys.executable, "-I", "-c", "open('ok', 'w').close()"]),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=10, env=_env(workdir))
        return proc.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _env(workdir: Path) -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}


def _read_capped(path: Path, cap: int, tail: bool = False) -> str:
    with path.open("rb") as f:
        if tail:
            f.seek(max(0, f.seek(0, os.SEEK_END) - cap))
        return f.read(cap).decode(errors="replace")


def run_program(source: str, limits: Limits = Limits(), isolation: str = "auto") -> ExecResult:
    """Execute `source` as a script in a fresh temp dir, isolated as well as this machine allows; exit 0 = passed.

    `isolation`: 'auto' (namespaces when available, else the Python guard with a warning), 'namespaces'
    (fail if unavailable) or 'guard' (the Python guard only).
    """
    if isolation not in ("auto", "namespaces", "guard"):
        raise ValueError(f"isolation must be 'auto', 'namespaces' or 'guard', got {isolation!r}")
    isolated = isolation != "guard" and isolation_available()
    if isolation == "namespaces" and not isolated:
        raise RuntimeError("sandbox: namespace isolation (unshare) is not available on this machine")
    if isolation == "auto" and not isolated:
        warnings.warn("sandbox: OS isolation (unshare namespaces) is unavailable; falling back to the Python "
                      "guard, which deliberate code can bypass (network, file writes, signals)", RuntimeWarning,
                      stacklevel=2)
    base = Path(tempfile.mkdtemp(prefix="llmbook-sandbox-"))
    workdir = base / "work"
    workdir.mkdir()
    try:
        (base / "guard.py").write_text(GUARD, encoding="utf-8")
        (base / "program.py").write_text(source, encoding="utf-8")
        argv = [sys.executable, "-I", "-B", str(base / "guard.py"), str(workdir), str(base / "program.py"),
                str(limits.cpu_s), str(limits.memory_mb), str(limits.file_size_mb), str(limits.max_processes)]
        # Output goes to files outside the work dir (capped by RLIMIT_FSIZE), never to pipes a child could hold.
        with (base / "stdout").open("wb") as out, (base / "stderr").open("wb") as err:
            proc = subprocess.Popen(_command(workdir, isolated, argv, limits.disk_mb), cwd=workdir, env=_env(workdir),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
            try:
                proc.wait(timeout=limits.timeout_s)
                status = "passed" if proc.returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                status = "timeout"
            finally:
                try:  # the whole group (and, isolated, the PID namespace with it): nothing outlives the run
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        cap = limits.max_output_bytes
        return ExecResult(status, proc.returncode, _read_capped(base / "stdout", cap),
                          _read_capped(base / "stderr", cap, tail=True), "namespaces" if isolated else "guard")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_many(sources: Sequence[str], limits: Limits = Limits(), workers: int = 2,
             isolation: str = "auto") -> list[ExecResult]:
    """Run programs concurrently (each in its own subprocess), results in input order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_program(s, limits, isolation), sources))


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
