"""The speedrun's stage machinery: run, verify and skip stages, with timings, checksums and a JSONL log
(@sec-speedrun).

Each stage writes its outputs under `OUT/<stage>/` atomically and, last, `OUT/<stage>/stage.json`: its
status, a summary of measured numbers, the hash of the settings it used, its wall-clock and CPU time, and
the SHA-256 of every output file. A rerun with `--resume` skips a stage whose `stage.json` verifies (same
settings, every listed file present with its checksum) and reruns the others; an interrupted pretraining
continues from its last checkpoint. A stage whose package has not landed yet is recorded as skipped with
the reason, never faked.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmbook.fileio import file_sha256, output_dir, replace_dir, run_lock, write_json
from llmbook.speedrun.config import SpeedrunConfig

STAGE_FILE = "stage.json"
LOG_FILE = "speedrun.jsonl"
FORMAT = 1


class StageError(RuntimeError):
    """A stage cannot run: its inputs are missing or do not verify."""


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (compilers, tokenizer threads)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, where the system reports them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@dataclass
class Context:
    """What a stage function receives: the preset, the output folder, a logger and earlier stages' records."""

    cfg: SpeedrunConfig
    out: Path
    log: Callable[[str], None]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: bool = True
    work: dict[str, Path] = field(default_factory=dict)  # the folder a running stage writes into
    stale: dict[str, str] = field(default_factory=dict)  # stages not selected to run whose record does not verify

    def stage_dir(self, name: str) -> Path:
        """Where stage `name` keeps its files (while it runs, possibly a temporary folder renamed at the end)."""
        return self.work.get(name, self.out / name)

    def summary(self, name: str) -> dict[str, Any]:
        """The summary of an earlier stage that is done; StageError naming it otherwise."""
        if name in self.stale:
            raise StageError(f"stage {name!r} is out of date ({self.stale[name]}); run it again first")
        record = self.records.get(name)
        if record is None or record.get("status") != "done":
            why = record.get("reason", "it has not run") if record else "it has not run"
            raise StageError(f"stage {name!r} is not done ({why}); run it first")
        return record["summary"]


@dataclass(frozen=True)
class Stage:
    """One pipeline step: `run(ctx) -> summary` writes files under `ctx.stage_dir(name)`.

    `settings` names the preset tables whose change reruns the stage; `after` the stages whose outputs it
    reads (their change reruns it too); `requires` a module that must be importable, else the stage is
    skipped with that reason. A stage writes into a temporary folder renamed into place when it succeeds,
    unless it is `resumable` (pretraining), which works in place and continues from what it finds there.
    """

    name: str
    run: Callable[[Context], dict[str, Any]]
    settings: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    requires: str = ""
    description: str = ""
    resumable: bool = False


def missing_module(name: str) -> str:
    """'' when module `name` can be imported, else the reason a stage that needs it is skipped."""
    if not name:
        return ""
    try:
        found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        found = False
    return "" if found else f"skipped: {name} not available"


def output_files(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder` (relative POSIX paths), `stage.json` and the lock excepted."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == STAGE_FILE or path.name.startswith("."):
            continue
        files[rel] = file_sha256(path)
    return files


def read_record(folder: Path) -> dict[str, Any] | None:
    """A stage's `stage.json`, or None when it is missing or unreadable."""
    try:
        record = json.loads((folder / STAGE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def verify_record(folder: Path, record: dict[str, Any] | None, key: str) -> str:
    """'' when the stage in `folder` is complete for settings `key`; otherwise why it must run again."""
    if record is None:
        return "no stage.json"
    if record.get("format") != FORMAT or record.get("key") != key:
        return "its settings or inputs changed"
    if record.get("status") == "skipped":
        return ""
    files = record.get("outputs")
    if not isinstance(files, dict):
        return "stage.json lists no outputs"
    for rel, digest in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing"
        if file_sha256(path) != digest:
            return f"{rel} does not match its checksum"
    return ""


class JsonlLog:
    """Append one JSON object per event to `speedrun.jsonl`, flushed at once, and echo a line to the console."""

    def __init__(self, path: Path, echo: Callable[[str], None]):
        self.path, self.echo = path, echo

    def event(self, stage: str, event: str, message: str = "", **fields: Any) -> None:
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "stage": stage, "event": event,
                  **({"message": message} if message else {}), **fields}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
        if message:
            self.echo(f"[{stage}] {message}")


def stage_key(cfg: SpeedrunConfig, stage: Stage, records: dict[str, dict[str, Any]]) -> str:
    """The settings hash of a stage: its own tables plus the keys of the stages it reads from."""
    upstream = {name: [records.get(name, {}).get("key"), records.get(name, {}).get("outputs")] for name in stage.after}
    text = json.dumps({"settings": cfg.section_hash(*stage.settings), "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_stages(cfg: SpeedrunConfig, out: str | Path, stages: list[Stage], only: list[str] | None = None,
               resume: bool = False, echo: Callable[[str], None] = print, progress: bool = True) -> dict[str, dict]:
    """Run `stages` in order into `out` (all of them, or those named in `only`) and return every stage's record.

    Without `resume`, a folder that already holds a speedrun is refused (ValueError), so nothing is
    overwritten by accident. With it, stages that verify are skipped. Stages not in `only` must already be
    done when a later stage reads them.
    """
    out = output_dir(out, "--out")
    names = [s.name for s in stages]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ValueError(f"--stages names unknown stage(s) {unknown}; stages: {', '.join(names)}")
    existing = [n for n in names if (out / n / STAGE_FILE).is_file()] + ([LOG_FILE] if (out / LOG_FILE).exists() else [])
    if existing and not resume:
        raise ValueError(f"--out {out} already holds a speedrun ({existing[0]}); pass --resume to continue it "
                         "or choose a new folder")
    with run_lock(out):
        log = JsonlLog(out / LOG_FILE, echo)
        log.event("speedrun", "start", f"preset {cfg.name} into {out}", preset=cfg.name, resume=resume,
                  load_average=load_average(), python=sys.version.split()[0])
        ctx = Context(cfg, out, log=lambda msg: None, progress=progress)
        for stage in stages:
            folder = out / stage.name
            key = stage_key(cfg, stage, ctx.records)
            record = read_record(folder)
            selected = only is None or stage.name in only
            stale = [n for n in stage.after if n in ctx.stale]
            if selected and stale:
                raise StageError(f"stage {stage.name!r} reads stage {stale[0]!r}, which is out of date "
                                 f"({ctx.stale[stale[0]]}); run it too (--stages {stale[0]},{stage.name})")
            problem = verify_record(folder, record, key)
            if not problem and record["status"] == "skipped" and not missing_module(stage.requires):
                problem = f"it was skipped, and {stage.requires} can be imported now"
            if not problem:
                ctx.records[stage.name] = record
                if selected:
                    log.event(stage.name, "verified", f"{record['status']}: verified, not rerun", status=record["status"])
                continue
            if not selected:
                if record is not None:
                    ctx.records[stage.name] = record  # reported as it is; a later stage reading it is refused
                    ctx.stale[stage.name] = problem
                continue
            ctx.records[stage.name] = _run_one(stage, ctx, folder, key, log, previous=problem)
        log.event("speedrun", "end", "done", load_average=load_average())
    return ctx.records


def _run_one(stage: Stage, ctx: Context, folder: Path, key: str, log: JsonlLog, previous: str) -> dict[str, Any]:
    """Run (or skip) one stage and write its stage.json last; a failure is logged and re-raised."""
    reason = missing_module(stage.requires)
    base = {"format": FORMAT, "stage": stage.name, "key": key, "description": stage.description}
    work = folder if stage.resumable else folder.with_name(f".{folder.name}.tmp")
    if not stage.resumable:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / STAGE_FILE).unlink(missing_ok=True)  # a stage being rerun is not done until it finishes
    if reason:
        record = {**base, "status": "skipped", "reason": reason, "summary": {}, "outputs": {}}
        log.event(stage.name, "skipped", reason)
    else:
        log.event(stage.name, "start", f"running ({previous})", load_average=load_average())
        ctx.log = lambda msg: log.event(stage.name, "info", msg)
        ctx.work[stage.name] = work
        started, wall0, cpu0 = datetime.now(timezone.utc), time.perf_counter(), cpu_seconds()
        try:
            summary = stage.run(ctx)
        except BaseException as err:
            log.event(stage.name, "failed", f"failed: {type(err).__name__}: {' '.join(str(err).split())}")
            raise
        finally:
            ctx.work.pop(stage.name, None)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        record = {**base, "status": "done", "summary": summary, "outputs": output_files(work),
                  "started": started.isoformat(timespec="seconds"), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                  "load_average": load_average()}
        log.event(stage.name, "done", f"done in {wall:,.0f} s wall, {cpu:,.0f} s CPU", wall_s=wall, cpu_s=cpu)
    write_json(work / STAGE_FILE, record)
    if work != folder:  # the finished stage replaces the old folder
        replace_dir(work, folder)
    return record
