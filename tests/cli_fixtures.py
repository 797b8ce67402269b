"""Run the `llmbook` command the way a user does, including on a full disk or in a read-only folder
(imported by test_cli_errors.py, test_fileio.py and test_train.py)."""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _limits(fsize: int | None, obey_permissions: bool):
    """preexec_fn of the child: cap the size of any file it writes (a full disk: writes fail with EFBIG), and
    make root obey file permissions (drop the capabilities that override them; a no-op for other users)."""

    def apply() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))  # Python ignores SIGXFSZ: write() fails
        if obey_permissions and os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
                if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return apply


def run_llmbook(*args: str, fsize: int | None = None, obey_permissions: bool = False, timeout: float = 300,
                env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m llmbook ARGS` in a child process; returns the completed process (text stdout/stderr)."""
    child_env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONDONTWRITEBYTECODE": "1",
                 "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **(env or {})}
    try:
        return subprocess.run([sys.executable, "-m", "llmbook", *map(str, args)], env=child_env, capture_output=True,
                              text=True, timeout=timeout, preexec_fn=_limits(fsize, obey_permissions))
    except subprocess.SubprocessError as err:
        if obey_permissions and "preexec_fn" in str(err):
            pytest.skip("this machine does not let root drop its file-permission override (no CAP_SETPCAP)")
        raise


def assert_one_line_error(code: int, stderr: str, command: str, *needles: str) -> str:
    """Exit status 2, no traceback, and a last stderr line `llmbook COMMAND: error: ...` naming every needle."""
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"llmbook {command}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    return errors[0]


def main_error(capsys, argv: list[str], command: str, *needles: str) -> str:
    """Run `llmbook.cli.main(argv)` in this process and check its one-line error (see assert_one_line_error)."""
    from llmbook.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    return assert_one_line_error(code, capsys.readouterr().err, command, *needles)


def readonly_dir(path: Path) -> Path:
    """A folder nobody may write into (r-x for everyone); run the command with obey_permissions=True."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    return path
