"""What every benchmark result records about its run: the date it ran, the machine, the load.

Numbers from these shared machines mean little without them (a neighbour's load once passed
for a 5x speed-up), so each benchmark stamps its JSON and Markdown with :func:`run_info`.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path


def today() -> str:
    """The run's date (UTC), ISO format."""
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def machine() -> str:
    """CPU model, core count, memory, OS and the Python / torch versions."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch  # noqa: PLC0415  (keeps this module importable before torch is)

    return (
        f"{os.cpu_count()}-core CPU ({model or platform.processor()}, shared), {mem_gb:.0f} GB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"
    )


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def run_info() -> dict:
    """``{"date", "machine", "command", "load_at_start"}`` for a result file."""
    return {"date": today(), "machine": machine(), "command": "python " + " ".join(sys.argv), "load_at_start": load_average()}
