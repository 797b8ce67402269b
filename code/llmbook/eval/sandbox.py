"""Run model-written code in a bubblewrap sandbox with limits, and score it with unbiased pass@k (@sec-evaluation-code).

Each program runs under bubblewrap (`bwrap`, the sandbox Flatpak is built on) in new user, PID, network, mount,
IPC, UTS and cgroup namespaces: as uid 65534 with every capability dropped and no new privileges, behind a
seccomp filter that denies mounts, namespaces, ptrace and other kernel interfaces, in a read-only view of
`/usr` and the interpreter with its `lib/` only (no `/etc` beyond the loader cache, no home directories, no `/root`),
with a size-capped tmpfs as its only writable directory and no network but its own empty loopback. When the
evaluator runs as root, bubblewrap itself runs as a random unprivileged uid, so the process limit binds
(the kernel exempts uid 0 from it). The whole sandbox dies with its PID namespace at the wall-clock timeout.

Without bubblewrap, `isolation='auto'` refuses to run anything; `isolation='unsafe-host'` is the explicit,
loudly warned opt-in that runs the code on this machine behind a Python seatbelt that stops accidents, not
attacks. Either way a program passes only if it ran to its end: the runner writes a random token to a file the
evaluator checks after the last statement (the tests) returned, so exit(), SystemExit and os._exit() before the
tests never pass. The token is not a secret from a program written to forge a pass: it runs in the same
interpreter as the runner, whose frame (and so the token) is one `sys._getframe(1)` away.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import secrets
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

ISOLATIONS = ("auto", "unsafe-host")
INSTALL_HINT = ("Model-written code runs only inside bubblewrap: install it (Debian/Ubuntu: sudo apt-get install "
                "bubblewrap; Fedora: sudo dnf install bubblewrap; or `make sysdeps` in the repository), or opt in to "
                "running it on this machine without isolation with isolation='unsafe-host' (CLI: "
                "--allow-unsandboxed-code), at your own risk.")


class SandboxUnavailable(RuntimeError):
    """Raised instead of running untrusted code when bubblewrap cannot isolate it on this machine."""


class UnsandboxedCodeWarning(RuntimeWarning):
    """Model-written code is running on this machine without isolation (isolation='unsafe-host')."""


warnings.simplefilter("always", UnsandboxedCodeWarning)  # every unsandboxed run says so, not only the first

# The trusted part of every run: limits, then the program, then the token that proves the program ran to its end.
# It runs inside the sandbox in the program's own interpreter: no guess, print or write gives the token away, but
# a program that looks for it on purpose (frames, gc, its own memory) finds it. It tells an early exit from a
# finished run; it is no defence against code written to forge a pass (nor are the tests against `__eq__` tricks).
RUNNER = r'''
import os, resource, sys

def _seatbelt(root):
    """unsafe-host only: refuse writes outside root, sockets, processes and ctypes (stops accidents, not attacks)."""
    import builtins, io, shutil, socket, _socket

    def inside(path):
        if isinstance(path, int):
            return True
        p = os.path.realpath(os.fsdecode(path))
        return p == root or p.startswith(root + os.sep)

    def deny(what):
        def blocked(*args, **kwargs):
            raise PermissionError("sandbox: %s is disabled" % what)
        return blocked

    class NoSocket:
        def __init__(self, *args, **kwargs):
            raise PermissionError("sandbox: network access is disabled")

    for mod in (socket, _socket):
        mod.socket = NoSocket
        for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname"):
            if hasattr(mod, name):
                setattr(mod, name, deny("network access"))
    real_open, real_os_open = builtins.open, os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError("sandbox: writing outside the temp dir is disabled: %s" % file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & writing and not inside(path):
            raise PermissionError("sandbox: writing outside the temp dir is disabled: %s" % path)
        return real_os_open(path, flags, *args, **kwargs)

    def path_guard(fn, n_paths=1):
        def guarded(*args, **kwargs):
            for p in args[:n_paths]:
                if not inside(p):
                    raise PermissionError("sandbox: %s outside the temp dir is disabled: %s" % (fn.__name__, p))
            return fn(*args, **kwargs)
        return guarded

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    for name in ("remove", "unlink", "rmdir", "mkdir", "makedirs", "removedirs", "truncate", "chmod", "chown", "utime"):
        setattr(os, name, path_guard(getattr(os, name)))
    for name in ("rename", "replace", "link", "symlink"):
        setattr(os, name, path_guard(getattr(os, name), 2))
    shutil.rmtree = path_guard(shutil.rmtree)
    shutil.move = path_guard(shutil.move, 2)
    for name in ("fork", "forkpty", "vfork", "system", "popen", "kill", "killpg", "execv", "execve", "execvp",
                 "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnl", "posix_spawn",
                 "posix_spawnp", "setuid", "putenv", "chroot"):
        if hasattr(os, name):
            setattr(os, name, deny("os." + name))
    import subprocess, multiprocessing
    subprocess.Popen = deny("subprocess")
    multiprocessing.Process.start = deny("multiprocessing")
    sys.modules["ctypes"] = sys.modules["_ctypes"] = None

def _main():
    fd_in, fd_done, cpu_s, memory_mb, file_size_mb, max_processes, open_files, seatbelt = (
        int(a) for a in sys.argv[1:9])
    with os.fdopen(fd_in, "rb") as f:
        token, source = f.read().decode("utf-8", "surrogatepass").split("\n", 1)
    mb = 1024 * 1024
    for limit, value in ((resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, memory_mb * mb),
                         (resource.RLIMIT_FSIZE, file_size_mb * mb), (resource.RLIMIT_NPROC, max_processes),
                         (resource.RLIMIT_NOFILE, open_files), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    if seatbelt:
        _seatbelt(os.getcwd())
    import linecache  # tracebacks show the program's lines without a file the program could read or change
    linecache.cache["program.py"] = (len(source), None, source.splitlines(True), "program.py")
    code = compile(source, "program.py", "exec")
    sys.argv = ["program.py"]
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    # Reached only when every statement ran, the tests last: exit(), SystemExit and os._exit() never get here.
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(fd_done, token.encode())
    os._exit(0)

_main()
'''


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run (memory is per process: the total is at most max_processes x memory_mb)."""

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_processes: int = 8  # every process and thread in the sandbox, bubblewrap's own init included
    max_output_bytes: int = 64_000
    disk_mb: int = 64  # the writable tmpfs under bubblewrap; unbounded with isolation='unsafe-host'
    open_files: int = 256  # per process; also bounds the kernel memory socket and pipe buffers hold

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb", "file_size_mb", "max_processes", "max_output_bytes",
                     "disk_mb", "open_files"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: status 'passed', 'failed' or 'timeout', its exit code, output and isolation.

    'passed' means the program exited 0 after its last statement ran; a program that exits early (exit(),
    SystemExit, os._exit) is 'failed' even with exit code 0.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    isolation: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Denied with EPERM by the seccomp filter: no benchmark program needs them, and escapes and kernel exploits do.
DENIED_SYSCALLS = (
    # mounts, namespaces, root changes
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
    # other processes' memory and descriptors
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # kernel interfaces with a record of privilege escalations
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl",
    "add_key", "request_key", "personality",
    # the machine itself
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff",
    "acct", "syslog", "quotactl", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname",
    "setdomainname", "iopl", "ioperm", "name_to_handle_at", "open_by_handle_at", "lookup_dcookie", "uselib", "vhangup",
    # memory that no process limit counts: file-less shared memory, System V segments and queues
    "memfd_create", "memfd_secret", "shmget", "msgget",
)
CLONE_NEW_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)
TERMINAL_INJECTION_IOCTLS = (0x5412, 0x541C)  # TIOCSTI, TIOCLINUX


@functools.cache
def seccomp_filter() -> bytes:
    """The compiled classic-BPF seccomp program bubblewrap loads: allow by default, deny `DENIED_SYSCALLS` with EPERM.

    Also denied: clone() with any namespace flag, the terminal-injection ioctls, and clone3() with ENOSYS (its
    flags sit in memory a filter cannot read; the C library then falls back to clone()). A foreign architecture
    (32-bit or x32 system calls on x86-64) kills the process. Built by libseccomp, for this machine's architecture.
    """
    import pyseccomp as sc  # loads libseccomp; only on Linux

    deny = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    for name in DENIED_SYSCALLS:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) != -1:  # names this libseccomp predates cannot be matched
            f.add_rule(deny, name)
    for flag in CLONE_NEW_FLAGS:
        f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for request in TERMINAL_INJECTION_IOCTLS:
        f.add_rule(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


@dataclass(frozen=True)
class Bubblewrap:
    """How this machine runs a sandbox: the bwrap binary, the interpreter inside and the directories it needs."""

    bwrap: str
    python: str
    python_dirs: tuple[str, ...]  # bound read-only at the same path (the interpreter and its lib/, when not under /usr)

    def argv(self, limits: Limits, seccomp_fd: int, info_fd: int) -> list[str]:
        """The bwrap command line, up to the interpreter."""
        argv = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--new-session", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL", "--clearenv",
                "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", "/tmp",
                "--setenv", "TMPDIR", "/tmp", "--setenv", "LANG", "C.UTF-8", "--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):  # merged-/usr links, or real dirs
            if os.path.islink(top):
                argv += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                argv += ["--ro-bind", top, top]
        argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        for d in self.python_dirs:
            argv += ["--ro-bind", d, d]
        argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.disk_mb * 1024 * 1024), "--tmpfs", "/tmp",
                 "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp",
                 "--seccomp", str(seccomp_fd), "--info-fd", str(info_fd), "--", self.python]
        return argv


def _interpreters() -> list[Bubblewrap]:
    """Candidates, best first: this interpreter's own installation, then the system's python3."""
    bwrap = shutil.which("bwrap") or "bwrap"
    own = Path(sys.base_exec_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = []
    if own.is_file():
        dirs = {str(Path(p).resolve()) for p in (sys.base_prefix, sys.base_exec_prefix)}
        outside_usr = sorted(d for d in dirs if d != "/usr" and not d.startswith("/usr/"))
        # the interpreter and lib/ (standard library, extension modules, the libraries they link), never the whole
        # prefix: built with --prefix=$HOME/.local, that would show the sandbox ~/.local/share
        binds = [str(own)] if outside_usr else []
        binds += [str(Path(d) / lib) for d in outside_usr for lib in ("lib", "lib64") if (Path(d) / lib).is_dir()
                  and not (Path(d) / lib).is_symlink()]
        found.append(Bubblewrap(bwrap, str(own), tuple(binds)))
    if os.path.isfile("/usr/bin/python3"):  # when the own one is unreadable to an unprivileged uid (under /root)
        found.append(Bubblewrap(bwrap, "/usr/bin/python3", ()))
    return found


@functools.cache
def _probe() -> Bubblewrap | str:
    """The first interpreter that runs a program end to end in a sandbox here, or why none does (once per process)."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap sandboxes need Linux, this is {sys.platform}"
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    try:
        version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=10).stdout.split()[-1]
        if tuple(int(x) for x in version.split(".")[:2]) < (0, 8):
            return f"bubblewrap {version} is too old: 0.8 or newer is needed (--size, --disable-userns)"
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired) as e:
        return f"cannot run bwrap --version ({e})"
    try:
        seccomp_filter()
    except (ImportError, OSError, RuntimeError) as e:
        return f"cannot build the seccomp filter with libseccomp ({e})"
    why = "no Python interpreter found to run inside the sandbox"
    for candidate in _interpreters():
        try:
            res = _run("print('ok')", Limits(timeout_s=20), candidate)
        except OSError as e:
            why = f"cannot start bwrap: {e}"
            continue
        if res.passed and res.stdout.strip() == "ok":
            return candidate
        why = f"bubblewrap cannot start a sandbox here with {candidate.python}: " + (
            res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1]
    return why


def isolation_problem() -> str | None:
    """Why bubblewrap cannot sandbox programs on this machine, or None when it can (probed once per process)."""
    found = _probe()
    return found if isinstance(found, str) else None


def isolation_available() -> bool:
    """Whether bubblewrap can sandbox programs on this machine."""
    return isolation_problem() is None


def require_isolation() -> Bubblewrap:
    """The sandbox setup of this machine, or SandboxUnavailable saying why there is none and what to do."""
    found = _probe()
    if isinstance(found, str):
        raise SandboxUnavailable(f"sandbox: {found}. {INSTALL_HINT}")
    return found


def _env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}


def _read_capped(f, cap: int, tail: bool = False) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - cap) if tail else 0)
    return f.read(cap).decode(errors="replace")


def _sandbox_uid() -> dict:
    """As root, a fresh unprivileged uid for bwrap itself: the process limit does not bind uid 0."""
    if os.geteuid() != 0:
        return {}
    uid = 1_000_000_000 + secrets.randbelow(1_000_000_000)  # far above real accounts; one per run
    return {"user": uid, "group": uid, "extra_groups": []}


def _kill_sandbox(proc: subprocess.Popen, info) -> None:
    """Kill the sandbox's PID-namespace init, then bwrap's process group, and reap bwrap.

    The kernel kills every process of a PID namespace before its init has exited, and bwrap exits after its
    init: so once bwrap is reaped, nothing of the run is left, not even a child that called setsid().
    """
    if proc.poll() is None:
        info.seek(0)
        try:
            os.kill(int(json.loads(info.read().decode() or "{}")["child-pid"]), signal.SIGKILL)
            proc.wait(timeout=5)
        except (ValueError, KeyError, TypeError, ProcessLookupError, subprocess.TimeoutExpired):
            pass  # unsafe-host, or the sandbox not set up yet: die-with-parent and the group kill below cover it
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def _run(source: str, limits: Limits, bwrap: Bubblewrap | None) -> ExecResult:
    """Run `source` once under bubblewrap, or on the host (`bwrap=None`, unsafe-host); see `run_program`."""
    token = secrets.token_hex(16)
    workdir = None if bwrap else tempfile.mkdtemp(prefix="llmbook-unsafe-host-")
    with tempfile.TemporaryFile() as program, tempfile.TemporaryFile() as done, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as seccomp, tempfile.TemporaryFile() as info:
        program.write(f"{token}\n{source}".encode("utf-8", "surrogatepass"))
        program.seek(0)
        runner = ["-I", "-B", "-c", RUNNER, str(program.fileno()), str(done.fileno()), str(limits.cpu_s),
                  str(limits.memory_mb), str(limits.file_size_mb), str(limits.max_processes), str(limits.open_files),
                  "0" if bwrap else "1"]
        fds = [program.fileno(), done.fileno()]
        if bwrap:
            seccomp.write(seccomp_filter())
            seccomp.seek(0)
            argv = bwrap.argv(limits, seccomp.fileno(), info.fileno()) + runner
            fds += [seccomp.fileno(), info.fileno()]
            popen = dict(cwd="/", env=_env("/tmp"), **_sandbox_uid())
        else:
            argv = [sys.executable, *runner]
            popen = dict(cwd=workdir, env=_env(workdir))
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=fds,
                                    start_new_session=True, **popen)
            try:
                proc.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_sandbox(proc, info)
        finally:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        done.seek(0)
        finished = done.read(len(token) + 1) == token.encode()
        status = "timeout" if timed_out else "passed" if proc.returncode == 0 and finished else "failed"
        cap = limits.max_output_bytes
        return ExecResult(status, proc.returncode, _read_capped(out, cap), _read_capped(err, cap, tail=True),
                          "bwrap" if bwrap else "unsafe-host")


def _sandbox_for(isolation: str, n_programs: int) -> Bubblewrap | None:
    """Bubblewrap for 'auto' (or SandboxUnavailable), None after a loud warning for 'unsafe-host'."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {', '.join(map(repr, ISOLATIONS))}, got {isolation!r}")
    if isolation == "auto":
        return require_isolation()
    warnings.warn(f"sandbox: running {n_programs} model-written program(s) on this machine WITHOUT isolation "
                  "(isolation='unsafe-host'): they can read, change and delete your files and reach the network",
                  UnsandboxedCodeWarning, stacklevel=3)
    return None


def run_program(source: str, limits: Limits = Limits(), isolation: str = "auto") -> ExecResult:
    """Execute `source` as a script in a fresh sandbox; 'passed' = ran to its last statement and exited 0.

    `isolation`: 'auto' runs it under bubblewrap and raises SandboxUnavailable where that is impossible;
    'unsafe-host' runs it on this machine with only a Python seatbelt, with an UnsandboxedCodeWarning each call.
    """
    return _run(source, limits, _sandbox_for(isolation, 1))


def run_many(sources: Sequence[str], limits: Limits = Limits(), workers: int = 2,
             isolation: str = "auto") -> list[ExecResult]:
    """Run programs concurrently (each in its own sandbox), results in input order; one warning per unsafe call."""
    bwrap = _sandbox_for(isolation, len(sources))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: _run(s, limits, bwrap), sources))


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
