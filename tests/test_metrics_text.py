"""`daemon.metrics_text` writes exactly what prometheus-client writes, and the daemon uses
prometheus-client's public API only."""

from __future__ import annotations

import ast
import math
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from daemon.metric_series import CostSeries
from daemon.metrics import Snapshot
from daemon.metrics_text import Prefixes, Samples, gauge_text, go_float
from tests.properties import examples

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ['evil"} 1\nfake 2', "back\\slash", "\u202eright-to-left", "*bold* <!here>", ""]


def client_text(families: list[tuple[str, str, tuple[str, ...], Samples]]) -> str:
    """What prometheus-client writes for the same gauge families."""

    class Families:
        def collect(self) -> list[GaugeMetricFamily]:
            made = []
            for name, help_, labels, samples in families:
                family = GaugeMetricFamily(name, help_, labels=list(labels))
                for values, value in samples:
                    family.add_metric(list(values), value)
                made.append(family)
            return made

    registry = CollectorRegistry()
    registry.register(Families())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_series_text_is_what_prometheus_client_would_write() -> None:
    """Also on the next cycle, when the label text of known series is reused."""
    prefixes = Prefixes()
    for cycle in range(3):
        snap = Snapshot(
            costs=tuple(
                CostSeries(f"k{i}", "gpt-4o", "month", Decimal(i + cycle) / 3)
                for i in range(len(HOSTILE) - cycle)  # a key vanishes each cycle
            ),
            key_names=tuple((f"k{i}", name) for i, name in enumerate(HOSTILE)),
            firing=tuple((name, "workspace", "100", "critical") for name in HOSTILE),
            prefixes=prefixes,
        )
        assert snap.series_text == client_text([f for f in snap.families() if f[3]]), cycle


def test_every_kind_of_number_is_written_as_the_client_writes_it() -> None:
    values = [
        0.0, -0.0, 1.0, -1.0, 1 / 3, 0.1, 1e-7, 123456.0, 999999.9, 1_000_000.0, 2_000_001.5,
        1234567.0, 12345678.25, 1e15, 1e16, 1.5e22, -2e6, -1e22, 2.0**53, math.inf, -math.inf,
        math.nan, float(Decimal("248.000000001")),
    ]  # fmt: skip
    samples: Samples = [((str(i), HOSTILE[i % len(HOSTILE)]), v) for i, v in enumerate(values)]
    families = [
        ("langdock_numbers", 'Help with a \\ backslash\nand "quotes"', ("z", "a"), samples),
        ("langdock_plain", "No labels", (), [((), 2_000_000.0)]),
        ("langdock_empty", "No samples", ("rule",), []),
    ]
    mine = "".join(gauge_text(*family) for family in families)
    assert mine == client_text(families)


@settings(max_examples=examples(200))
@given(
    st.lists(
        st.floats(allow_nan=True, allow_infinity=True)
        | st.integers(-(10**20), 10**20)
        | st.decimals(-(10**9), 10**9, places=9).map(float)
        | st.integers(0, 10**12).map(lambda nanos: nanos / 10**9),
        max_size=20,
    )
)
def test_the_inline_number_path_writes_what_go_float_and_the_client_write(
    values: list[float],
) -> None:
    """`gauge_text` writes most values without calling `go_float`: the same text, any value
    (integers too, which the client takes as well), with labels and without."""
    samples: Samples = [((str(i),), v) for i, v in enumerate(values)]
    lines = gauge_text("langdock_n", "n", ("i",), samples).splitlines()[2:]
    assert lines == [f'langdock_n{{i="{i}"}} {go_float(v)}' for i, v in enumerate(values)]
    families = [("langdock_n", "n", ("i",), samples)]
    assert gauge_text(*families[0], prefixes=Prefixes()) == client_text(families)


def test_only_prometheus_clients_public_api_is_imported() -> None:
    """No private names (``_SilentHandler``) and no helper modules (``utils``) that may
    change in any release: the custom collector API, the families and `generate_latest`."""
    public = {"prometheus_client", "prometheus_client.core", "prometheus_client.registry"}
    for path in sorted((ROOT / "daemon").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prometheus"):
                assert node.module in public, f"{path.name}: {node.module}"
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name}: {private}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("prometheus_client.") for a in node.names)
