"""A changed family is written from its last text (`daemon.metrics_text._LastText`): a series
at the same place with the same value takes its whole line, one with a new value the text
before its value, one that moved its text from a look-up. The same text as a family written
afresh, whatever the cycles before it held."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.metrics_text import Prefixes, Samples, gauge_text

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


@settings(max_examples=150)
@given(cycles())
def test_a_family_written_from_its_last_text_is_the_family_written_afresh(
    family_cycles: list[tuple[str, tuple[str, ...], Samples]],
) -> None:
    prefixes = Prefixes()
    for help_, labels, samples in family_cycles:
        kept = gauge_text("langdock_x", help_, labels, samples, prefixes)
        assert kept == gauge_text("langdock_x", help_, labels, samples)


# values whose text differs although they compare equal (or compare unequal to themselves)
TRICKY = st.sampled_from([0.0, -0.0, 0, 1, 1.0, True, float("nan"), float("inf"), 1e-300])


@st.composite
def evolving(draw: st.DrawFn) -> tuple[tuple[str, ...], list[Samples]]:
    """A family's samples over cycles as the daemon's are: the same series in the same
    order, some values changed (to equal values of another text among them), now and then a
    series added or dropped somewhere, which moves the ones after it."""
    labels = draw(LABELS.filter(bool))
    series = draw(st.lists(st.tuples(*[VALUES] * len(labels)), min_size=1, max_size=8, unique=True))
    samples: Samples = [(values, draw(NUMBERS | TRICKY)) for values in series]
    made = [samples]
    for _ in range(draw(st.integers(1, 4))):
        samples = [
            (values, draw(TRICKY | NUMBERS) if draw(st.booleans()) else value)
            for values, value in samples
        ]
        if samples and draw(st.booleans()):
            del samples[draw(st.integers(0, len(samples) - 1))]
        new = draw(st.tuples(*[VALUES] * len(labels)))
        if draw(st.booleans()) and all(values != new for values, _ in samples):
            samples.insert(draw(st.integers(0, len(samples))), (new, draw(TRICKY)))
        made.append(samples)
    return labels, made


@settings(max_examples=150)
@given(evolving())
def test_lines_taken_by_place_are_the_lines_written_afresh(
    family: tuple[tuple[str, ...], list[Samples]],
) -> None:
    labels, cycles_samples = family
    prefixes = Prefixes()
    for samples in cycles_samples:
        kept = gauge_text("langdock_x", "help", labels, samples, prefixes)
        assert kept == gauge_text("langdock_x", "help", labels, samples)
