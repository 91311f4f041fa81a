"""A family's text is kept across snapshots while its samples stay the same
(`daemon.metrics_text.Prefixes.texts`), and written anew as soon as one changes."""

from __future__ import annotations

from daemon.metrics_text import Prefixes, gauge_text

LABELS = ("rule", "scope")


def test_the_same_samples_give_the_kept_text_and_a_change_a_new_one() -> None:
    prefixes = Prefixes()
    samples = [(("r", "k1"), 1.0), (("r", "k2"), 2.5)]
    first = gauge_text("langdock_x", "help", LABELS, samples, prefixes)
    again = gauge_text("langdock_x", "help", LABELS, list(samples), prefixes)
    assert again is first
    changed = gauge_text("langdock_x", "help", LABELS, [(("r", "k1"), 1.0)], prefixes)
    assert changed == gauge_text("langdock_x", "help", LABELS, [(("r", "k1"), 1.0)])
    assert "k2" not in changed
    other_help = gauge_text("langdock_x", "other", LABELS, [(("r", "k1"), 1.0)], prefixes)
    assert other_help.startswith("# HELP langdock_x other\n")
    assert gauge_text("langdock_x", "help", LABELS, samples, prefixes) == first


def test_nan_samples_are_written_again() -> None:
    prefixes = Prefixes()
    samples = [(("r", "k1"), float("nan"))]
    first = gauge_text("langdock_x", "help", LABELS, samples, prefixes)
    again = [(("r", "k1"), float("nan"))]  # NaN is not equal to NaN: compared, then written
    assert gauge_text("langdock_x", "help", LABELS, again, prefixes) == first
