"""What every benchmark script shares: the machine, the data, results files and a table.

Each script is runnable alone (`uv run --frozen python -m benchmarks.<name>`), prints its
figures and, with `--results FILE`, merges them into that JSON file under its own key.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"


def data_root() -> str:
    return os.environ.get("CONVLENS_DATA_DIR", str(REPO / "data"))


def serve_env() -> dict[str, str]:
    """The environment for a `make serve` a benchmark starts: not the caller's model choice,
    since the command names the model."""
    return {k: v for k, v in os.environ.items() if k not in ("CONVLENS_MODEL", "MODEL")}


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    import torch

    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_avg_1_5_15": load_avg(),
    }


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size in MiB (ru_maxrss is KiB on Linux)."""
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def rss_mib(pid: int) -> float:
    """Current resident set size of a process in MiB, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


@contextmanager
def timer():
    """`with timer() as t: ...; t()` gives the seconds elapsed (perf_counter)."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def merge_results(path: Path | None, key: str, value: Any) -> None:
    """Put `value` under `key` in the JSON file at `path` (created if missing)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2) + "\n")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--results", type=Path, default=None, help="merge figures into this JSON")
    return p


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))
