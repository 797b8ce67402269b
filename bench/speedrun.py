"""Time a whole speedrun on this machine and keep its report card: `llmbook speedrun --preset PRESET`, then the
model-against-compressors comparison (bench/compress.py) on the full held-out books.

Prints one JSON record and writes bench/results/speedrun[-<preset>]-<device>.json (the report card, with the
measured wall-clock time, the CPU time of the process and its children, the load average before and after, and
the machine) and the same name with .md (report.md, samples included). The peer is the
preset's budget: `within_budget` compares the measured wall clock with it. On a machine shared with other
jobs the wall clock is inflated; the CPU time and the load average say by how much. The preset's name is left out
of the file name when it is the device's (`speedrun-cpu.json` for the cpu preset).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402

from llmbook.fileio import atomic_write
from llmbook.speedrun.book import speedrun_dir


def children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: the preset's folder in the cache)")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run (its time is then partial)")
    ap.add_argument("--out-dir", default="bench/results")
    args = ap.parse_args(argv)
    out = args.out or speedrun_dir(args.preset)
    if out.exists() and not args.resume:
        if any(out.iterdir()) and not (out / "speedrun.jsonl").is_file():
            raise SystemExit(f"--out {out} is not empty and holds no speedrun: refusing to delete it")
        shutil.rmtree(out)  # a fresh, complete run: every stage is timed
    load_before = os.getloadavg()
    cpu0, start = children_cpu_seconds(), time.perf_counter()
    cmd = [sys.executable, "-m", "llmbook", "speedrun", "--preset", args.preset, "--out", str(out), "--quiet"]
    subprocess.run(cmd + (["--resume"] if args.resume else []), check=True)
    wall, cpu = time.perf_counter() - start, children_cpu_seconds() - cpu0
    load_after = os.getloadavg()
    subprocess.run([sys.executable, str(Path(__file__).with_name("compress.py")), "--run", str(out), "--out-dir",
                    args.out_dir], check=True)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    device = report["machine"]["device"]
    budget = report["total"]["budget_minutes"]
    figures = {"wall_s": wall, "cpu_s": cpu, "cpu_per_wall": cpu / wall, "load_average_before": load_before,
               "load_average_after": load_after, "threads": report["machine"]["torch_threads"],
               "within_budget": (wall <= 60 * budget) if budget else None, "budget_minutes": budget,
               "resumed": args.resume, "report": report}
    name = "speedrun" if args.preset == device else f"speedrun-{args.preset}"
    rec = record(name, figures, {"preset": args.preset, "command": " ".join(cmd[1:4] + cmd[4:6])},
                 ["torch", "tokenizers"], out_dir=args.out_dir, device=device)
    text = (out / "report.md").read_text(encoding="utf-8")
    note = (f"\n\nMeasured by bench/speedrun.py at commit {rec['commit'][:7]} ({rec['date']}): {wall / 60:.1f} min wall "
            f"clock, {cpu / 60:.1f} min of CPU time, load average {load_before[0]:.1f} before and {load_after[0]:.1f} "
            "after.\n")
    atomic_write(Path(args.out_dir) / f"{name}-{device}.md", lambda f: f.write(text + note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
