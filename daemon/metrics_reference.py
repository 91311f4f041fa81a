"""docs/METRICS.md, generated from the collector itself: every series `/metrics` can show, its
type, labels and help text. Regenerate with ``make docs``; a test keeps it current."""

from __future__ import annotations

import sys
from pathlib import Path

from daemon.metrics import (
    Snapshot,
    SnapshotCollector,
    Stats,
)


def _every_family() -> Snapshot:
    """A snapshot in which every family has a sample (so its labels show)."""
    stats = Stats()
    stats.export_errors[("api-keys", "server")] = 1
    stats.export_last_success["api-keys"] = 1.0
    stats.export_duration["api-keys"] = 1.0
    stats.notifications["sent"] = 1
    stats.rows_rejected[("api-keys", "negative")] = 1
    return Snapshot(
        silenced=(("rule", "scope"),),
        stats=stats,
        ready=(("rule", True),),
        backfill=(1, 2),
        next_attempt=1.0,
    )


def rows() -> list[tuple[str, str, str, str]]:
    """(name, type, labels, help) of every family, the per-key and per-rule ones first."""
    snap = _every_family()
    found = [
        (name, "gauge", ", ".join(labels), help_) for name, help_, labels, _ in snap.families()
    ]
    collector = SnapshotCollector()
    collector.snapshot = snap
    for family in collector.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = sorted({k for s in family.samples for k in s.labels})
        found.append((name, family.type, ", ".join(labels), family.documentation))
    return found


def render() -> str:
    lines = [
        "# Metrics",
        "",
        "Generated from the collector by `make docs` (`daemon/metrics_reference.py`); a test",
        "keeps it current. Served on `metrics.listen` at `/metrics`; every series is built from",
        "the last cycle's snapshot, so a key or rule that disappears is gone after the next",
        "cycle. Per-key series are bounded to `metrics.top_keys` (the rest is",
        '`api_key_id="other"`), per-rule series to the top members. Series carry stable ids',
        "only (`api_key_id`; `scope` is `workspace`, a key id or a model name): renaming a key",
        "keeps its series, and `langdock_api_key_info` holds the names to join on (names cut",
        "to 120 characters). Each family's unit is in its name. Alert rules on the daemon's",
        'own health: `docs/OPERATIONS.md`, "Prometheus".',
        "",
        "| name | type | labels | help |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| `{n}` | {t} | {labels} | {h} |" for n, t, labels, h in rows()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - `make docs`
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/METRICS.md")
    target.write_text(render())
    print(f"wrote {target}")
