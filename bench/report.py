"""What a benchmark run found: one `Row` per measure, printed as a table and saved as JSON.

A row holds chatkeep's median and its baseline's (its ceiling: the context relay or the durable
relay on the same store; the bare relay, for information; or for the history measure chatkeep
itself at a short history), the raw runs behind both, the CPU each side spent a turn, and the
target the ratio (or, for memory, the value) must meet. A row whose figures need words (overload's
accepted and refused turns) carries the text the table shows for them. A measure that cannot
run yet says why in `note` and passes nothing and fails nothing.
"""

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("chatkeep", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "aiohttp", "orjson", "pydantic")


@dataclass(frozen=True)
class Target:
    op: Literal[">=", "<="]
    bound: float
    on: Literal["ratio", "value"] = "ratio"

    def met(self, number: float) -> bool:
        return number >= self.bound if self.op == ">=" else number <= self.bound

    def describe(self, unit: str) -> str:
        return f"{self.op} {self.bound:g}" + ("x" if self.on == "ratio" else f" {unit}")


@dataclass(frozen=True)
class Row:
    key: str
    measure: str
    unit: str
    chatkeep: float | None
    baseline: float | None
    baseline_name: str = "relay"
    chatkeep_name: str = "chatkeep"
    target: Target | None = None
    note: str = ""
    runs: dict[str, list[float]] = field(default_factory=dict)
    failures: int = 0
    chatkeep_text: str = ""  # what the table shows instead of the number, when one number would not say it
    baseline_text: str = ""
    # CPU microseconds a turn (median over the runs) by side: "chatkeep" and "baseline" for the
    # servers' processes, "chatkeep db" and "baseline db" for their PostgreSQL backends.
    cpu_us: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.chatkeep is None or not self.baseline:
            return None
        return self.chatkeep / self.baseline

    @property
    def passed(self) -> bool | None:
        """Whether the target is met; a run in which requests failed meets none."""
        if self.target is None:
            return None
        if self.failures:
            return False
        number = self.ratio if self.target.on == "ratio" else self.chatkeep
        return None if number is None else self.target.met(number)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = self.target.describe(self.unit) if self.target else None
        return data | {"ratio": self.ratio, "passed": self.passed}


def verdict(row: Row) -> str:
    if row.passed is None:
        return row.note or "-"
    result = "pass" if row.passed else "FAIL"
    return f"{result} ({row.note})" if row.note else result


def cpu_text(row: Row) -> str:
    """`chatkeep + its database / baseline + its database`, in CPU µs a turn; "-" when not measured."""

    def side(name: str) -> str:
        if name not in row.cpu_us:
            return "-"
        database = row.cpu_us.get(f"{name} db")
        return f"{row.cpu_us[name]:,.0f}" + (f" + db {database:,.0f}" if database is not None else "")

    if not row.cpu_us:
        return "-"
    return f"{side('chatkeep')} / {side('baseline')}"


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    digits = 0 if abs(value) >= 100 else 2 if abs(value) < 10 else 1
    return f"{value:,.{digits}f} {unit}"


CPU_HEADER = "CPU µs a turn: chatkeep / baseline"


def _cells(row: Row) -> tuple[str, ...]:
    baseline = f"{_number(row.baseline, row.unit)} ({row.baseline_name})" if row.baseline is not None else "-"
    chatkeep = row.chatkeep_text or _number(row.chatkeep, row.unit)
    ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
    target = row.target.describe(row.unit) if row.target else "-"
    return (row.measure, chatkeep, row.baseline_text or baseline, ratio, target, cpu_text(row), verdict(row))


def table(rows: list[Row]) -> str:
    header = ("measure", "chatkeep", "baseline", "ratio", "target", CPU_HEADER, "result")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        lines.append(_cells(row))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in text)


def markdown(rows: list[Row], info: dict[str, Any]) -> str:
    """The table as Markdown, with the machine it ran on: what docs/performance.md quotes."""
    lines = [
        f"{info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['date']}, commit {info['commit']}",
        "",
        f"| measure | chatkeep | baseline | ratio | target | {CPU_HEADER} | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in _cells(row)) + " |")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
        "packages": {name: _version(name) for name in PACKAGES},
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def save(path: Path, rows: list[Row], *, info: dict[str, Any], settings: dict[str, Any], seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": info,
        "settings": settings,
        "elapsed_seconds": round(seconds, 1),
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
        "measures": [row.to_json() for row in rows],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()
