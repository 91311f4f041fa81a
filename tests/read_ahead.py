"""The large files the suite's servers and imports map in, asked for once at its start.

A machine short of memory, or one that pages out what was not used for a while, keeps little
of Chromium (300 MB), polars' runtime (170 MB), Prometheus' and PostgreSQL's binaries between
two runs: a test that starts one then waits for its pages, one fault (a small read) at a time,
seconds behind every worker that does the same. `start` asks the kernel for them in a
background thread (`posix_fadvise` WILLNEED: large reads, queued at once, while the workers
start and collect). It is only advice: pages already in memory are not read again, a missing
file is left out, and nothing waits for it.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import threading
from pathlib import Path

# Debian's chromium (/usr/bin/chromium is a shell script starting /usr/lib/chromium/chromium)
CHROMIUM = ("chromium", "chromedriver", "resources.pak", "icudtl.dat", "v8_context_snapshot.bin")


def files() -> list[str]:
    found = [shutil.which(name) for name in ("prometheus", "promtool")]
    found += [f"/usr/lib/chromium/{name}" for name in CHROMIUM]
    found += glob.glob("/usr/lib/postgresql/*/bin/postgres")
    polars = importlib.util.find_spec("polars")  # located, not imported
    if polars is not None and polars.origin is not None:
        found += glob.glob(str(Path(polars.origin).parent.parent / "_polars_runtime*" / "*.so"))
    return [path for path in found if path]


def _advise(paths: list[str]) -> None:
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def start() -> None:
    if hasattr(os, "posix_fadvise"):
        threading.Thread(target=_advise, args=(files(),), name="read-ahead", daemon=True).start()
