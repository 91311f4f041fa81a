"""A changed family is written with the text before each known series' value taken from its
last text (`daemon.metrics_text._known_prefixes`): the same text as a family written afresh,
whatever the cycles before it held."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.metrics_text import Prefixes, Samples, gauge_text
from tests.properties import examples

# label values that look like the line's own parts: spaces, quotes, backslashes, newlines,
# braces, and a value's text
VALUES = st.sampled_from(["k1", "a b", 'q"uote', "back\\slash", "new\nline", "} 1.0", " ", ""])
LABELS = st.sampled_from([("rule", "scope"), ("scope", "rule"), ("rule",), ()])
NUMBERS = st.floats(allow_nan=False) | st.sampled_from([0.0, 1.0, 2e6, float("inf")])


@st.composite
def cycles(draw: st.DrawFn) -> list[tuple[str, tuple[str, ...], Samples]]:
    """A family's help, label names and samples over a few cycles: series come, go, move
    and change value; now and then the labels or the help change."""
    made = []
    for _ in range(draw(st.integers(1, 5))):
        labels = draw(LABELS)
        series = draw(st.lists(st.tuples(*[VALUES] * len(labels)), max_size=6, unique=True))
        samples = [(values, draw(NUMBERS)) for values in series]
        made.append((draw(st.sampled_from(["help", "other help"])), labels, samples))
    return made


@settings(max_examples=examples(150))
@given(cycles())
def test_a_family_written_from_its_last_text_is_the_family_written_afresh(
    family_cycles: list[tuple[str, tuple[str, ...], Samples]],
) -> None:
    prefixes = Prefixes()
    for help_, labels, samples in family_cycles:
        kept = gauge_text("langdock_x", help_, labels, samples, prefixes)
        assert kept == gauge_text("langdock_x", help_, labels, samples)
