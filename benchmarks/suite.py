"""Run the benchmarks and write RESULTS.md from what they measured.

    .venv/bin/python benchmarks/suite.py                 # every benchmark; RESULTS.md: how long
    .venv/bin/python benchmarks/suite.py --quick         # every table, small: a few minutes
    .venv/bin/python benchmarks/suite.py --only scaling  # one again; the others are kept

``make bench`` runs the first. Each benchmark is a module here with ``run(quick, work)``
returning a :class:`Section`: its text, its tables' raw rows and the command that made it.
The suite writes each table's rows to ``results/<table>.csv``, the section's text to
``results/<name>.md`` with the date, the machine and how long it took, and then
RESULTS.md: a header and every section in order. A section is written as soon as it is
measured, so a failure later in the run loses nothing already measured, and ``--only``
measures some sections again and keeps the others (each says when it was measured).

Quick mode measures the same things with fewer patients, seeds, epochs and repeats, to show
that every benchmark runs; its figures mean nothing, so it writes to build/bench-quick
unless told otherwise, never over the committed results.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medadapt.engine import csv_row

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The benchmarks, in the order RESULTS.md shows them.
BENCHMARKS = [
    "dicom_loading",
    "dicom_scan",
    "phantom_generation",
    "training_loop",
    "source_model",
    "scaling",
    "batch_throughput",
    "epoch_profile",
    "adaptation",
    "transfer",
]
#: Benchmarks run only when named with --only (too long for the hour of ``make bench``);
#: RESULTS.md keeps their last measured section, which says when it was measured.
OPTIONAL = ["augmentation_effect"]
ORDER = BENCHMARKS + OPTIONAL
QUICK_OUT = ROOT / "build" / "bench-quick"
#: Set to 1 by a section's ``--development``: its development seeds, written to build/.
DEVELOPMENT = "MEDADAPT_BENCH_DEVELOPMENT"
DEVELOPMENT_OUT = ROOT / "build" / "bench-development"


@dataclass
class Section:
    """What one benchmark measured, ready to be written.

    Attributes:
        heading: the section's title (without the ``##``).
        lines: the section's Markdown: what was measured, the tables, the findings.
        tables: raw rows of each table, by CSV name (``results/<name>.csv``).
        command: how to run this benchmark alone.
        versions: library versions that matter to this benchmark (``pydicom 3.0.2``).
        files: further files by name (a figure), written beside the CSVs in ``results/``.
    """

    heading: str
    lines: list[str]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    command: str = ""
    versions: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    #: What the pair-seeds this run kept from earlier runs (``Finished``) cost when they
    #: were measured, in seconds, and how many of them were kept without their seconds.
    kept_seconds: float = 0.0
    kept_untimed: int = 0


def verdict(met: bool) -> str:
    """How a finding states whether its target was met."""
    return "met" if met else "**not met**"


def paired(differences: list[float]) -> tuple[float, float, int]:
    """The mean of paired differences (one per seed), its standard error, and whether it
    is beyond seed-to-seed variation: 1 above twice its standard error, -1 below minus
    twice, 0 within.

    Example:
        >>> mean, error, sign = paired([0.04, 0.05, 0.03])
        >>> round(mean, 3), round(error, 4), sign
        (0.04, 0.0058, 1)
    """
    import math
    import statistics

    mean = statistics.mean(differences)
    if len(differences) < 2:  # one seed has no spread: nothing is beyond it
        return mean, math.nan, 0
    error = statistics.stdev(differences) / len(differences) ** 0.5
    return mean, error, (mean > 2 * error) - (mean < -2 * error)


#: Runs a module (``-m NAME ARGS``) or a script (``PATH ARGS``) as ``__main__`` and, as the
#: process ends, writes the peak resident memory of its own address space (VmHWM, in KiB)
#: to the file named first. ``ru_maxrss`` would not do: after ``exec`` it still counts the
#: memory of the process that forked it (here, a benchmark with PyTorch loaded).
_LAUNCHER = """
import atexit, os, runpy, sys
out = sys.argv[1]
def peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(out, "w") as handle:
        handle.write(kib)
atexit.register(peak)
if sys.argv[2] == "-m":
    sys.argv = sys.argv[3:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[2:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # as python SCRIPT does
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def measured(arguments: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``python ARGUMENTS`` in a new process: its seconds, its own peak resident memory
    in MiB, and what it printed.

    Raises:
        RuntimeError: the process failed (with what it wrote to stderr).
    """
    with tempfile.NamedTemporaryFile("r", suffix=".peak") as peak:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, peak.name, *arguments],
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(
                f"python {' '.join(arguments)} exited {done.returncode}:\n{done.stderr[-4000:]}"
            )
        return seconds, int(peak.read()) / 1024, done.stdout


def machine() -> dict[str, Any]:
    """Where the benchmarks run: processor, cores, memory, Python, torch and its threads."""
    import torch

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        memory = f"{kib / 2**20:.0f} GiB memory"
    return {
        "processor": model,
        "cores": os.cpu_count(),
        "memory": memory,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def describe(info: dict[str, Any]) -> str:
    """The machine in one line."""
    parts = [
        info["processor"],
        f"{info['cores']} cores",
        info["memory"],
        info["system"],
        f"Python {info['python']}",
        f"torch {info['torch']} ({info['torch_threads']} threads)",
        f"GPU: {info['gpu']}",
    ]
    return ", ".join(p for p in parts if p)


#: What ``make bench`` itself rewrites: a change there is not a change to the code measured.
OUTPUTS = ("benchmarks/results", "benchmarks/RESULTS.md")


def commit() -> str:
    """The repository's commit, with ``+changes`` when the working tree differs from it
    (the benchmark's own outputs, ``OUTPUTS``, aside)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
            + [f":(exclude){path}" for path in OUTPUTS],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + (" +changes" if dirty else "")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows of one table; the columns are every key, in the order first seen."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csv_row(columns))
        writer.writerows(csv_row(row.get(column, "") for column in columns) for row in rows)


def record(
    name: str, section: Section, out: Path, quick: bool, seconds: float, at: str = ""
) -> None:
    """Write one section's CSVs, its Markdown and what it was measured with (``at``: the
    commit the run started from)."""
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    for table, rows in section.tables.items():
        write_csv(results / f"{table}.csv", rows)
    for file_name, content in section.files.items():
        (results / file_name).write_bytes(content)
    info = machine()
    meta = {
        "name": name,
        "heading": section.heading,
        "date": time.strftime("%Y-%m-%d"),
        "minutes": round(seconds / 60, 1),
        "quick": quick,
        "commit": at or commit(),
        "machine": info,
        "versions": section.versions,
        "tables": sorted(section.tables),
        "kept minutes": round(section.kept_seconds / 60, 1),
        "kept untimed": section.kept_untimed,
    }
    raw = ", ".join(f"results/{table}.csv" for table in sorted(section.tables))
    footer = [
        f"Measured {meta['date']} in {meta['minutes']} min{' (quick mode)' if quick else ''} "
        f"at commit {meta['commit']} on {describe(info)}"
        + (f"; {', '.join(section.versions)}" if section.versions else "")
        + ".",
        f"Command: `{section.command}`"
        + (
            " (not part of `make bench`, which would take too long with it)."
            if name in OPTIONAL
            else " (or `make bench`, which runs every benchmark)."
        ),
    ]
    if raw:
        footer.append(f"Raw numbers: {raw}.")
    text = "\n".join([f"## {section.heading}", "", *section.lines, "", *footer, ""])
    (results / f"{name}.md").write_text(text)
    (results / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")


def render(out: Path) -> Path:
    """RESULTS.md from every section measured so far, in the benchmarks' order."""
    results = out / "results"
    metas = [
        json.loads((results / f"{name}.json").read_text())
        for name in ORDER
        if (results / f"{name}.json").is_file() and (results / f"{name}.md").is_file()
    ]
    measured = {meta["name"] for meta in metas}
    dates = sorted({meta["date"] for meta in metas})
    machines = {describe(meta["machine"]) for meta in metas}
    quick = any(meta["quick"] for meta in metas)
    lines = [
        "# Benchmark results",
        "",
        "Generated by `make bench` (benchmarks/suite.py) from what the benchmarks measured; "
        "nothing here is typed by hand. Timings are ratios against a baseline measured in "
        "the same run, side by side; the absolute seconds are shown but only hold for this "
        "machine. `make bench` measures everything again; a pair-seed finished by an earlier "
        "run of the same code and settings is kept in build/bench-adaptation/ and "
        "build/bench-transfer/, so an interrupted run resumes. "
        "`make bench-quick` shows in a few minutes that every benchmark runs (into "
        "build/bench-quick), and `.venv/bin/python benchmarks/suite.py --only NAME` measures "
        "one section again, keeping the others.",
        "",
    ]
    if quick:
        lines += [
            "**Quick mode: small data, few seeds and epochs. These figures show that every "
            "benchmark runs; they are not results.**",
            "",
        ]
    if len(machines) == 1:
        lines.append(f"Machine: {machines.pop()}.")
    else:
        lines.append("Machines: each section names its own.")
    lines.append(f"Measured: {', '.join(dates)}." if dates else "Nothing measured yet.")
    if metas and not quick:
        lines.append(duration(metas))
    missing = [name for name in BENCHMARKS if name not in measured]
    if missing:
        lines.append(
            "Not measured yet: "
            + ", ".join(f"`{name}` (`benchmarks/suite.py --only {name}`)" for name in missing)
            + "."
        )
    lines += ["", "Sections:", ""]
    lines += [f"- [{meta['heading']}](#{_anchor(meta['heading'])})" for meta in metas]
    lines.append("")
    body = [(results / f"{meta['name']}.md").read_text() for meta in metas]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n" + "\n".join(body))
    return path


def duration(metas: list[dict[str, Any]]) -> str:
    """What ``make bench`` costs from nothing, as its sections were last measured: each
    section's own minutes plus what the pair-seeds it kept from an earlier run cost when
    they were measured (sections ``make bench`` does not run, ``OPTIONAL``, aside)."""
    own = [meta for meta in metas if meta["name"] in BENCHMARKS]

    def hours(meta: dict[str, Any]) -> float:
        return (meta["minutes"] + meta.get("kept minutes", 0.0)) / 60

    total = sum(hours(meta) for meta in own)
    kept = sum(meta.get("kept minutes", 0.0) for meta in own) / 60
    untimed = sum(meta.get("kept untimed", 0) for meta in own)
    slowest = sorted(own, key=hours, reverse=True)[:2]
    parts = ", ".join(f"{meta['name']} {hours(meta):.1f} h" for meta in slowest)
    text = f"`make bench` from nothing, as its sections were last measured: {total:.1f} hours"
    text += f" ({parts}"
    if kept:
        text += f"; {kept:.1f} h of it by pair-seeds kept from an earlier run of the same code"
    if untimed:
        text += f"; {untimed} kept pair-seeds whose time was not recorded are not counted"
    missing = [name for name in BENCHMARKS if name not in {meta["name"] for meta in own}]
    if missing:
        text += f"; not counted, not measured yet: {', '.join(missing)}"
    return text + ")."


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    kept = "".join(c for c in heading.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def run(names: list[str], quick: bool, out: Path, work: Path | None = None) -> Path:
    """Measure ``names`` one after another, writing each section as soon as it is done."""
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("MEDADAPT_PSEUDONYM_KEY", "benchmark-secret-0123456789")
    at = commit()  # the code measured: the working tree when the run started
    for number, name in enumerate(names, start=1):
        module = importlib.import_module(name)
        print(f"[{number}/{len(names)}] {name} ...", flush=True)
        environment = dict(os.environ)
        start = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-", dir=work) as folder:
                section = module.run(quick=quick, work=Path(folder))
        finally:
            # A benchmark may set variables (a cache folder, the plugins to load): the
            # next one starts from the same environment as the first.
            os.environ.clear()
            os.environ.update(environment)
        seconds = time.perf_counter() - start
        record(name, section, out, quick, seconds, at)
        print(f"[{number}/{len(names)}] {name}: {seconds / 60:.1f} min", flush=True)
        print("\n".join(section.lines), flush=True)
    return render(out)


def development() -> bool:
    """Whether this run measures the development seeds (a section's ``--development``)."""
    return os.environ.get(DEVELOPMENT) == "1"


class Finished:
    """The pair-seeds of one section already measured with this very code and these
    settings, so that a run that was stopped (or cut by a time limit) goes on where it
    stopped.

    Each finished pair-seed is kept as ``build/bench-<name>/<run>/<pair>-seed<N>.json`` with
    a fingerprint of the settings and of every file whose change could change a figure
    (medadapt's package and plugins, this module and the section's ``modules``); a kept
    result whose fingerprint differs is measured again. Delete the folder to measure
    everything again.
    """

    SOURCES = ("engine", "plugins")

    def __init__(self, settings: Any, quick: bool, name: str, modules: tuple[str, ...]) -> None:
        import hashlib

        kind = "development" if settings.development else "reported"
        #: Quick mode keeps nothing: its figures mean nothing, and the tests run it.
        self.folder = None if quick else ROOT / "build" / f"bench-{name}" / kind
        digest = hashlib.sha256(json.dumps(vars(settings), sort_keys=True, default=str).encode())
        files = [p for top in self.SOURCES for p in sorted((ROOT / top).rglob("*.py"))]
        files += [HERE / module for module in ("suite.py", *modules)]
        for path in files:
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
        self.fingerprint = digest.hexdigest()
        self.reused: list[str] = []
        #: What the kept pair-seeds cost when measured (see ``Section.kept_seconds``).
        self.kept_seconds = 0.0
        self.kept_untimed = 0
        self._started = time.perf_counter()

    def _path(self, pair: str, seed: int) -> Path:
        assert self.folder is not None
        return self.folder / f"{pair.replace(' ', '-')}-seed{seed}.json"

    def get(self, pair: str, seed: int) -> dict[str, Any] | None:
        """The kept result of ``pair`` at ``seed``, or None when it must be measured."""
        self._started = time.perf_counter()
        if self.folder is None:
            return None
        path = self._path(pair, seed)
        if not path.is_file():
            return None
        kept = json.loads(path.read_text())
        if kept.get("fingerprint") != self.fingerprint:
            print(f"{path}: made by other code or settings, measured again", flush=True)
            return None
        if "seconds" in kept:
            self.kept_seconds += kept["seconds"]
        else:
            self.kept_untimed += 1
        self.reused.append(f"{pair} seed {seed} ({kept['measured']}, commit {kept['commit']})")
        print(f"{pair} seed {seed}: kept from {kept['measured']} ({path})", flush=True)
        return kept["result"]

    def put(self, pair: str, seed: int, result: dict[str, Any]) -> None:
        """Keep ``result`` (written whole or not at all), with the seconds since the ``get``
        that found nothing kept: what measuring it cost."""
        seconds = time.perf_counter() - self._started
        if self.folder is None:
            return
        path = self._path(pair, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = {
            "fingerprint": self.fingerprint,
            "measured": time.strftime("%Y-%m-%d %H:%M"),
            "commit": commit(),
            "seconds": round(seconds, 1),
            "result": result,
        }
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(kept, indent=1) + "\n")
        partial.replace(path)


def main_for(name: str, argv: list[str]) -> None:
    """``python benchmarks/<name>.py [--quick] [--development] [suite options]``: one
    section; ``--development`` measures its development seeds into build/bench-development."""
    arguments = list(argv)
    if "--development" in arguments:
        arguments.remove("--development")
        os.environ[DEVELOPMENT] = "1"
        if "--out" not in arguments:
            arguments += ["--out", str(DEVELOPMENT_OUT)]
    main(["--only", name, *arguments])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small and fast: shows every benchmark runs"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=ORDER,
        metavar="NAME",
        help=f"these benchmarks only, of: {', '.join(ORDER)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where RESULTS.md and results/ go (default: benchmarks/, or build/bench-quick "
        "with --quick)",
    )
    parser.add_argument(
        "--work", type=Path, help="where temporary data go (default: the system's temp folder)"
    )
    parser.add_argument(
        "--render", action="store_true", help="measure nothing: write RESULTS.md again"
    )
    args = parser.parse_args(argv)
    out = args.out or (QUICK_OUT if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    path = render(out) if args.render else run(args.only or BENCHMARKS, args.quick, out, args.work)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
