"""The code-execution sandbox against attacks, early exits that must not pass, real HumanEval/MBPP code, and pass@k.

Each attack test performs the attack for real and asserts it failed: the program is written so that it exits 0 only
when the attack worked, and the host is checked afterwards. Tests marked with the `sandbox_ready` fixture need
bubblewrap; `make sysdeps` installs it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from llmbook.eval import sandbox
from llmbook.eval.sandbox import (Limits, SandboxUnavailable, UnsandboxedCodeWarning, estimate_pass_at_k,
                                  humaneval_program, mbpp_program, pass_at_k, run_many, run_program)

FAST = Limits(timeout_s=5.0, cpu_s=3, memory_mb=512)
sandboxed = pytest.mark.usefixtures("sandbox_ready")


@pytest.fixture(params=["auto", "unsafe-host"])
def isolation(request) -> str:
    """Both modes: bubblewrap (where it can be had) and the explicit unsandboxed opt-in."""
    if request.param == "auto":
        request.getfixturevalue("sandbox_ready")
    return request.param


def run(source: str, limits: Limits = FAST, isolation: str = "auto"):
    """run_program, bounded: the suite fails instead of hanging if a run does not return."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(_quiet(source, limits, isolation)), daemon=True)
    t.start()
    t.join(limits.timeout_s + 30)
    if t.is_alive():
        pytest.fail(f"sandbox run did not return within {limits.timeout_s + 30} s")
    return out[0]


def _quiet(source, limits, isolation):
    if isolation != "unsafe-host":
        return run_program(source, limits, isolation)
    with pytest.warns(UnsandboxedCodeWarning):
        return run_program(source, limits, isolation)


def _listening_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(1.0)
    accepted: list = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    return server, t, accepted


def _processes_with(marker: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(d.name))
        except OSError:
            pass
    return found


# --- the sandbox's properties, checked from inside -------------------------------------------------------------


@sandboxed
def test_unprivileged_no_capabilities_no_new_privileges_seccomp_on():
    src = ("import json, os\n"
           "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
           "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(),\n"
           "    'caps': [status[k].strip() for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')],\n"
           "    'nnp': status['NoNewPrivs'].strip(), 'seccomp': status['Seccomp'].strip(),\n"
           "    'root': os.listdir('/')}))\n")
    res = run(src)
    assert res.passed and res.isolation == "bwrap", res
    seen = json.loads(res.stdout)
    assert seen["uid"] == seen["gid"] == 65534 and seen["groups"] in ([], [65534])
    assert seen["caps"] == ["0000000000000000"] * 5
    assert seen["nnp"] == "1" and seen["seccomp"] == "2"  # 2 = filter mode
    assert set(seen["root"]) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev", "tmp"}


@sandboxed
def test_seccomp_denies_with_eperm_what_would_otherwise_succeed():
    import pyseccomp

    calls = {  # each returns >= 0 without the filter (as an unprivileged user in the sandbox's own namespaces)
        "ptrace": (0, 0, 0, 0),  # PTRACE_TRACEME
        "personality": (0xFFFFFFFF,),  # query
        "unshare": (0x00020000,),  # CLONE_NEWNS, own user namespace is not needed
        "keyctl": (0, -3, 0),  # KEYCTL_GET_KEYRING_ID of the session keyring
        "mount": (b"none", b"/tmp", None, 0x1000 | 0x20, None),  # MS_BIND | MS_REMOUNT
        "clone3": (0, 0),
    }
    nrs = {name: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) for name in calls}
    src = ("import ctypes, json\nlibc = ctypes.CDLL(None, use_errno=True)\nout = {}\n"
           f"for name, args in {calls!r}.items():\n"
           f"    nr = {nrs!r}[name]\n"
           "    out[name] = (libc.syscall(nr, *args), ctypes.get_errno())\n"
           "print(json.dumps(out))\n")
    res = run(src)
    assert res.passed, res
    got = json.loads(res.stdout)
    assert got.pop("clone3") == [-1, errno.ENOSYS]  # so the C library falls back to clone(), whose flags are checked
    assert got == {name: [-1, errno.EPERM] for name in got}


@sandboxed
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x32 system calls exist only on x86-64")
def test_foreign_architecture_system_calls_kill_the_program():
    # the x32 ABI's getpid: a filter that only checks syscall numbers could be walked around this way
    res = run("import ctypes\nctypes.CDLL(None).syscall(0x40000000 | 39)\nprint('survived')\n")
    assert res.status == "failed" and "survived" not in res.stdout and res.returncode in (-31, 159), res  # SIGSYS


@sandboxed
def test_remount_through_posix_system_cannot_write_to_the_host(tmp_path):
    victim = tmp_path / "ESCAPED"
    res = run(f"import posix\nassert posix.system('mount -o remount,bind,rw / && echo x > {victim}') == 0\n")
    assert res.status == "failed" and not victim.exists(), res
    # nor through libc directly, after the module cache is emptied
    src = ("import sys\nsys.modules.pop('ctypes', None); sys.modules.pop('_ctypes', None)\nimport ctypes\n"
           "libc = ctypes.CDLL(None, use_errno=True)\n"
           "assert libc.mount(b'none', b'/', None, 0x1000 | 0x20, None) == 0, ctypes.get_errno()\n"
           f"open({str(victim)!r}, 'w').write('x')\n")
    res = run(src)
    assert res.status == "failed" and "AssertionError: 1" in res.stderr and not victim.exists(), res  # EPERM


@sandboxed
@pytest.mark.parametrize("attack", [
    "import posix; posix.unlink(VICTIM)",
    "import posix; assert posix.system('rm ' + VICTIM) == 0",
    "import _io; _io.open(VICTIM, 'w').write('pwned')",
    "import io; io.FileIO(VICTIM, 'w').write(b'pwned')",
    "import sys; sys.modules.pop('ctypes', None); sys.modules.pop('_ctypes', None)\n"
    "import ctypes; assert ctypes.CDLL(None).unlink(VICTIM.encode()) == 0",
    "import os, shutil; shutil.rmtree(os.path.dirname(VICTIM))",
], ids=["posix.unlink", "posix.system", "_io.open", "io.FileIO", "ctypes-after-pop", "rmtree"])
def test_files_of_the_host_cannot_be_changed(tmp_path, attack):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    res = run(f"VICTIM = {str(victim)!r}\n{attack}")
    assert res.status == "failed", res
    assert victim.read_text() == "keep me"


@sandboxed
def test_no_secrets_are_readable_shadow_root_or_homes():
    bound = sandbox.require_isolation().python_dirs  # the interpreter's own installation may sit under a home
    src = ("import os\nfor path in ('/etc/shadow', '/etc/passwd', '/root/.bashrc', '/root/.ssh/id_rsa'):\n"
           "    try:\n        open(path).read(); print('READ', path)\n    except OSError:\n        pass\n"
           "for top in ('/root', '/home', '/etc', '/var', '/run', '/opt', '/srv', '/mnt'):\n"
           "    for d, dirs, files in os.walk(top):\n"
           "        for f in files:\n            print('FILE', os.path.join(d, f))\n")
    res = run(src)
    assert res.passed, res
    assert "READ" not in res.stdout, res.stdout
    files = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("FILE")]
    # all there is: the loader cache, and the interpreter's installation if it lives under a home directory
    assert all(f == "/etc/ld.so.cache" or any(f == d or f.startswith(d + "/") for d in bound)
               for f in files), files[:20]


@sandboxed
def test_only_the_interpreter_and_its_lib_are_shown_of_a_prefix_in_a_home(tmp_path, monkeypatch):
    """Python built with --prefix=$HOME/.local: the sandbox sees bin/pythonX.Y and lib/, not ~/.local/share."""
    real = Path(sys.base_exec_prefix).resolve()
    prefix = Path("/var/tmp") / f"llmbook-prefix-{uuid.uuid4().hex}" / "home" / "user" / ".local"  # /tmp is the tmpfs
    exe = f"python{sys.version_info.major}.{sys.version_info.minor}"
    try:
        (prefix / "bin").mkdir(parents=True)
        (prefix / "share").mkdir()
        (prefix / "share" / "secret.txt").write_text("keep out")
        try:  # hard links: the same installation (without its site-packages) at a second path, at no cost in space
            os.link(real / "bin" / exe, prefix / "bin" / exe)
            for d, dirs, files in os.walk(real / "lib"):
                dirs[:] = [x for x in dirs if x != "site-packages"]
                (prefix / Path(d).relative_to(real)).mkdir(exist_ok=True)
                for f in files:
                    os.link(Path(d) / f, prefix / Path(d).relative_to(real) / f, follow_symlinks=False)
        except OSError:
            pytest.skip("cannot hard-link this interpreter's installation into /var/tmp")
        for path in [prefix.parents[2], *prefix.parents[2].rglob("*")]:
            if path.is_dir() and not path.is_symlink():  # new folders only: the linked files are the installation's
                path.chmod(0o755)
        monkeypatch.setattr(sys, "base_prefix", str(prefix))
        monkeypatch.setattr(sys, "base_exec_prefix", str(prefix))
        own = sandbox._interpreters()[0]
        assert own.python_dirs == (str(prefix / "bin" / exe), str(prefix / "lib"))
        src = (f"import os\nprint(sorted(os.listdir({str(prefix)!r})))\n"
               f"print(os.path.exists({str(prefix / 'share')!r}))\n")
        res = sandbox._run(src, FAST, own)
        assert res.passed, res
        assert res.stdout.split("\n")[:2] == ["['bin', 'lib']", "False"]
    finally:
        subprocess.run(["rm", "-rf", str(prefix.parents[2])], check=False)


@sandboxed
def test_sockets_cannot_reach_a_server_on_the_host_loopback():
    server, t, accepted = _listening_server()
    port = server.getsockname()[1]
    attacks = [
        f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)",
        f"import _socket; _socket.socket().connect(('127.0.0.1', {port}))",
        f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)",
    ]
    results = [run(src) for src in attacks]
    t.join()
    server.close()
    assert [r.status for r in results] == ["failed"] * len(attacks), results
    assert accepted == []


@sandboxed
def test_signals_reach_neither_the_evaluator_nor_other_processes():
    # the evaluator is a child here, so an attack that works kills it, not the test run
    bystander = subprocess.Popen(["sleep", "60"])
    script = ("import json\nfrom llmbook.eval import sandbox\n"
              "print(json.dumps([sandbox.run_program(src, sandbox.Limits(timeout_s=5)).status for src in (\n"
              "    'import posix, time\\nposix.kill(posix.getppid(), 9)\\ntime.sleep(0.5)',\n"
              f"    'import posix\\nposix.kill({bystander.pid}, 9)')]))\n")
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr  # the evaluator survived
        assert json.loads(proc.stdout)[1] == "failed"  # ESRCH: no such process in the sandbox's PID namespace
        assert bystander.poll() is None  # still alive
    finally:
        bystander.kill()
        bystander.wait(timeout=10)


@sandboxed
@pytest.mark.parametrize("parent", ["exits", "hangs past the timeout"])
def test_a_setsid_child_does_not_outlive_the_run(parent):
    marker = f"llmbook-setsid-{uuid.uuid4().hex}"
    src = ("import os, sys, time\n"
           "if os.fork() == 0:\n"
           "    os.setsid()\n"
           "    if os.fork() == 0:\n"  # a grandchild in its own session: the classic daemon
           "        os.execv(sys.executable, [sys.executable, '-c',"
           f" 'import time\\nwhile True:\\n    print(1, flush=True); time.sleep(0.05)', '{marker}'])\n"
           "    os._exit(0)\n"
           "time.sleep(0.5)\n" + ("time.sleep(60)\n" if parent != "exits" else ""))
    try:
        res = run(src, Limits(timeout_s=2.0, cpu_s=2))
        assert res.status == ("passed" if parent == "exits" else "timeout"), res
        assert _processes_with(marker) == []  # gone as soon as run_program returns
    finally:
        for pid in _processes_with(marker):
            os.kill(pid, 9)


@sandboxed
def test_the_sandbox_dies_with_a_killed_evaluator():
    marker = f"llmbook-orphan-{uuid.uuid4().hex}"
    program = ("import os, sys\nos.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', "
               f"'{marker[::-1]}'[::-1]])\n")  # reversed: the evaluator's own command line must not match
    evaluator = subprocess.Popen([sys.executable, "-c", "from llmbook.eval import sandbox\n"
                                  f"sandbox.run_program({program!r}, sandbox.Limits(timeout_s=60, cpu_s=60))"])
    try:
        deadline = time.monotonic() + 30
        while not _processes_with(marker) and time.monotonic() < deadline and evaluator.poll() is None:
            time.sleep(0.05)
        assert _processes_with(marker), "the sandboxed program never started"
        evaluator.kill()  # SIGKILL: no cleanup code of the evaluator runs
        evaluator.wait(timeout=10)
        deadline = time.monotonic() + 10  # the kernel delivers the parent-death signal asynchronously
        while _processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_with(marker) == []
    finally:
        evaluator.kill()
        for pid in _processes_with(marker):
            os.kill(pid, 9)


@sandboxed
def test_process_limit_binds():
    src = ("import os, time\nn = 0\ntry:\n"
           "    while n < 200:\n"
           "        if os.fork() == 0:\n            time.sleep(5); os._exit(0)\n"
           "        n += 1\nexcept BlockingIOError:\n    pass\nprint(n)\n")
    res = run(src, Limits(timeout_s=10, max_processes=6))
    assert res.passed, res
    assert int(res.stdout) <= 6 - 2  # bubblewrap's init and the program itself count too


@sandboxed
def test_fork_bomb_is_bounded_and_ends_with_the_run():
    start = time.monotonic()
    res = run("import os\nwhile True:\n    os.fork()\n", Limits(timeout_s=2.0, cpu_s=2, max_processes=8))
    assert res.status in ("failed", "timeout") and time.monotonic() - start < 15, res


@sandboxed
def test_disk_fill_stops_at_the_tmpfs_size():
    src = ("import os\nwritten = 0\nfor where in ('/', '/dev', '/dev/shm', '/usr', '/etc'):\n"
           "    try:\n        open(os.path.join(where, 'fill'), 'wb')\n        print('WROTE', where)\n"
           "    except OSError:\n        pass\n"
           "try:\n    for i in range(64):\n        with open(f'/tmp/fill{i}', 'wb') as f:\n"
           "            f.write(b'0' * (1 << 20))\n        written += 1\n"
           "except OSError as e:\n    print('stopped', e.errno)\nprint('MB', written)\n")
    res = run(src, Limits(file_size_mb=4, disk_mb=8))
    assert res.passed and "WROTE" not in res.stdout, res
    assert f"stopped {errno.ENOSPC}" in res.stdout and int(res.stdout.split("MB ")[1]) <= 8, res.stdout


HIDDEN_MEMORY = {  # each holds 192 MB of the host's memory outside the address space that memory_mb bounds
    "memfd": "import os\nfds = []\nfor i in range(12):\n    fds.append(os.memfd_create('m'))\n"
             "    for _ in range(16):\n        os.write(fds[-1], b'x' * (1 << 20))\n",
    "sysv-shm": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n"
                "for i in range(3):\n    sid = libc.shmget(0, 64 << 20, 0o1600)\n"
                "    assert sid >= 0, ctypes.get_errno()\n"
                "    p = libc.shmat(sid, None, 0)\n    ctypes.memset(p, 1, 64 << 20)\n"
                "    libc.shmdt(ctypes.c_void_p(p))\n",
    "socket-buffers": "import socket\npairs = []\nfor i in range(900):\n    a, b = socket.socketpair()\n"
                      "    a.setblocking(False)\n    pairs.append((a, b))\n    try:\n        while True:\n"
                      "            a.send(b'x' * 65536)\n    except BlockingIOError:\n        pass\n",
}


@sandboxed
@pytest.mark.parametrize("attack", HIDDEN_MEMORY.values(), ids=HIDDEN_MEMORY.keys())
def test_memory_outside_the_address_space_is_bounded_too(attack):
    res = run(attack + "print('HELD')\n", Limits(timeout_s=20, cpu_s=10, memory_mb=128))
    assert res.status == "failed" and "HELD" not in res.stdout, res


@sandboxed
def test_huge_output_is_bounded_without_buffering_it():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    src = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(300):\n    sys.stdout.write(chunk)\n"
    res = run(src, Limits(timeout_s=10.0, cpu_s=5, max_output_bytes=1000))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(res.stdout) == 1000 and res.status == "failed"  # killed by RLIMIT_FSIZE at file_size_mb
    assert grown_mb < 100, grown_mb


# --- no silent fallback ----------------------------------------------------------------------------------------


@pytest.fixture
def no_bubblewrap(monkeypatch, tmp_path):
    """A machine without bwrap on its PATH, probed afresh."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    sandbox._probe.cache_clear()
    yield
    sandbox._probe.cache_clear()


def test_auto_refuses_to_run_without_bubblewrap(no_bubblewrap, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(SandboxUnavailable, match=r"bubblewrap \(bwrap\) is not installed.*apt-get install bubblewrap"
                                                 r".*isolation='unsafe-host'"):
        run_program(f"open({str(marker)!r}, 'w').close()", FAST)
    with pytest.raises(SandboxUnavailable):
        run_many(["pass"], FAST)
    assert not marker.exists() and not sandbox.isolation_available()


def test_unsafe_host_is_explicit_and_warns_every_time(no_bubblewrap):
    for _ in range(2):
        with pytest.warns(UnsandboxedCodeWarning, match="WITHOUT isolation"):
            res = run_program("print('hi')", FAST, isolation="unsafe-host")
        assert res.passed and res.isolation == "unsafe-host"
    with pytest.raises(ValueError, match="isolation must be one of 'auto', 'unsafe-host'"):
        run_program("pass", FAST, isolation="guard")


def test_unsafe_host_seatbelt_stops_accidents(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    accidents = [
        f"import os; os.remove({str(victim)!r})",
        f"import shutil; shutil.rmtree({str(tmp_path)!r})",
        f"open({str(victim)!r}, 'w').write('oops')",
        f"import os; os.rename({str(victim)!r}, 'moved.txt')",
        "import socket; socket.create_connection(('127.0.0.1', 9))",
        "import subprocess; subprocess.run(['true'])",
        "import os\nwhile True:\n    os.fork()\n",
    ]
    for src in accidents:
        res = run(src, FAST, "unsafe-host")
        assert res.status == "failed" and "PermissionError: sandbox:" in res.stderr, (src, res.stderr)
    assert victim.read_text() == "keep me"
    ok = run("open('scratch.txt', 'w').write('x'); import os; os.remove('scratch.txt')", FAST, "unsafe-host")
    assert ok.passed, ok.stderr  # its own temp dir is writable


# --- a pass means the tests ran to their end ---------------------------------------------------------------------

EXITS = {"raise SystemExit": "raise SystemExit", "exit()": "exit()", "quit()": "quit()",
         "sys.exit(0)": "import sys; sys.exit(0)", "os._exit(0)": "import os; os._exit(0)"}


def _problems(data_dir):
    he = json.loads((data_dir / "humaneval" / "HumanEval_dev.jsonl").open().readline())
    mb = json.loads((data_dir / "mbpp" / "mbpp_validation.jsonl").open().readline())
    return he, mb


def _early_exit_programs(data_dir, exit_stmt: str) -> dict[str, str]:
    he, mb = _problems(data_dir)
    mb_name = re.match(r"assert\s+(?:not\s+)?\(?\s*(\w+)\s*\(", mb["test_list"][0]).group(1)
    return {
        "humaneval, top level": humaneval_program(he, f"    return None\n{exit_stmt}\n"),
        "humaneval, in the function": humaneval_program(he, f"    {exit_stmt}\n"),
        "mbpp, top level": mbpp_program(mb, f"def {mb_name}(*args):\n    return None\n{exit_stmt}\n"),
        "mbpp, in the function": mbpp_program(mb, f"def {mb_name}(*args):\n    {exit_stmt}\n"),
    }


@pytest.mark.parametrize("exit_stmt", EXITS.values(), ids=EXITS.keys())
def test_exiting_before_the_tests_is_not_a_pass(data_dir, isolation, exit_stmt):
    for where, program in _early_exit_programs(data_dir, exit_stmt).items():
        res = run(program, FAST, isolation)
        assert res.status == "failed", (where, res)
        assert res.returncode == 0  # exit status 0, and still not a pass


def test_the_reference_solutions_still_pass(data_dir, isolation):
    he, mb = _problems(data_dir)
    assert run(humaneval_program(he, he["canonical_solution"]), FAST, isolation).passed
    assert run(mbpp_program(mb, mb["code"]), FAST, isolation).passed


def test_a_forged_sentinel_is_not_a_pass(data_dir, isolation):
    he, _ = _problems(data_dir)
    forger = ("    import os, secrets\n"
              "    for guess in ('passed', 'ok', '0' * 32, secrets.token_hex(16)):\n"
              "        print(guess, flush=True)\n"
              "        for fd in range(3, 256):\n"
              "            try:\n                os.write(fd, guess.encode())\n"
              "            except OSError:\n                pass\n"
              "    os._exit(0)\n")
    res = run(humaneval_program(he, forger), FAST, isolation)
    assert res.status == "failed" and res.returncode == 0, res


# --- limits and ordinary programs -------------------------------------------------------------------------------


@sandboxed
def test_ordinary_programs_pass_and_fail():
    assert run("print(sum(range(10)))").stdout.strip() == "45"
    bad = run("assert 1 + 1 == 3")
    assert bad.status == "failed" and "AssertionError" in bad.stderr and 'File "program.py", line 1' in bad.stderr
    ok = run("open('scratch.txt', 'w').write('x'); import os; os.remove('scratch.txt')")
    assert ok.passed, ok.stderr  # the work dir is writable
    child = run("import subprocess; print(subprocess.run(['echo', 'hi'], capture_output=True, text=True).stdout)")
    assert child.passed and child.stdout.strip() == "hi"  # a child process is fine, inside the limits


@sandboxed
def test_infinite_loop_times_out():
    res = run("while True:\n    pass\n", Limits(timeout_s=1.0, cpu_s=10))
    assert res.status == "timeout" and not res.passed


@sandboxed
def test_cpu_limit_kills_busy_loop_before_wall_clock():
    res = run("while True:\n    pass\n", Limits(timeout_s=30.0, cpu_s=1))
    assert res.status == "failed" and res.returncode != 0  # SIGXCPU/SIGKILL from RLIMIT_CPU


@sandboxed
def test_memory_and_file_size_limits():
    assert run("x = bytearray(2 * 1024**3)", Limits(memory_mb=256)).status == "failed"
    assert run("open('big', 'wb').write(b'0' * (8 * 1024**2))", Limits(file_size_mb=1)).status == "failed"


@sandboxed
def test_output_is_capped_and_limits_validated():
    res = run("print('x' * 1_000_000)", Limits(max_output_bytes=1000))
    assert res.passed and len(res.stdout) == 1000
    with pytest.raises(ValueError, match="Limits.timeout_s must be > 0"):
        Limits(timeout_s=0)


@sandboxed
def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(data_file):
    problems = [json.loads(line) for line in data_file("humaneval/HumanEval_dev.jsonl").open()][:8]
    good = run_many([humaneval_program(p, p["canonical_solution"]) for p in problems], FAST)
    assert all(r.passed and r.isolation == "bwrap" for r in good), [r.stderr[-300:] for r in good if not r.passed]
    wrong = run_many([humaneval_program(p, "    return None\n") for p in problems], FAST)
    assert not any(r.passed for r in wrong)


@sandboxed
def test_mbpp_reference_code_passes(data_file):
    problems = [json.loads(line) for line in data_file("mbpp/mbpp_prompt.jsonl").open()][:5]
    results = run_many([mbpp_program(p, p["code"]) for p in problems], FAST)
    assert all(r.passed for r in results), [r.stderr[-300:] for r in results]


def test_pass_at_k_matches_combinatorial_definition():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 5), (20, 20, 1), (7, 2, 7), (200, 13, 100)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the plain success rate
    rng = np.random.default_rng(0)  # unbiased: averaging over draws of n samples gives 1-(1-p)^k
    p, n, k = 0.2, 20, 5
    est = np.mean([pass_at_k(n, int(rng.binomial(n, p)), k) for _ in range(4000)])
    assert est == pytest.approx(1 - (1 - p) ** k, abs=0.01)
    assert estimate_pass_at_k([[True, False], [False, False]], 1) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="pass@5 needs at least 5 samples"):
        pass_at_k(3, 1, 5)
