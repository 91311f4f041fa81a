"""A fast writer of gauge families in the Prometheus text format (0.0.4).

`/metrics` serves tens of thousands of per-key, per-rule and per-alert lines with 10,000 keys;
prometheus-client's `generate_latest` spends about 25 µs a line on them (docs/PERFORMANCE.md),
so the snapshot renders its large gauge families here once and each scrape reuses the text.
It writes exactly what prometheus-client writes for the same family (label values escaped,
labels sorted by name, numbers as Go prints them): tests/test_metrics_text.py compares the
two, hostile label values and edge numbers included.
"""

from __future__ import annotations

import math

__all__ = ["Prefixes", "Samples", "gauge_text", "go_float"]

Samples = list[tuple[tuple[str, ...], float]]  # label values (in label-name order), value


def go_float(value: float) -> str:
    """A sample value as Go (and so prometheus-client) prints it: ``1.0``, ``2e+06``,
    ``+Inf``, ``NaN``."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Prefixes:
    """Per family, its samples and text as last written. A family whose samples did not
    change (the limits, the firing alerts: 37,000 of 87,000 lines at 1,000 keys) is not
    written again. The others keep their labels from cycle to cycle (stable ids), so most of
    their lines only need their value written: the text before a known series' value is
    taken from the family's last text, for the time of the writing only. Nothing but the
    text is kept (a kept prefix per line cost 13 MB at 1,000 keys: docs/PERFORMANCE.md).
    The collector keeps one of these for all its snapshots."""

    def __init__(self) -> None:
        # name → (help, label names, samples) and their text, as last written
        self.texts: dict[str, tuple[tuple[str, tuple[str, ...], Samples], str]] = {}


def gauge_text(
    name: str,
    help_: str,
    label_names: tuple[str, ...],
    samples: Samples,
    prefixes: Prefixes | None = None,
) -> str:
    """One gauge family: ``# HELP``, ``# TYPE`` and a line per sample."""
    if prefixes is None:
        return _family_text(name, help_, label_names, samples, {})
    family = (help_, label_names, samples)
    last = prefixes.texts.get(name)
    if last is not None and last[0] == family:
        return last[1]
    known = _known_prefixes(last, label_names) if last is not None else {}
    text = _family_text(name, help_, label_names, samples, known)
    prefixes.texts[name] = (family, text)
    return text


def _known_prefixes(
    last: tuple[tuple[str, tuple[str, ...], Samples], str], label_names: tuple[str, ...]
) -> dict[tuple[str, ...], str]:
    """Each series' text before its value, as in the family's last text: a line per sample
    after the two header lines, in the samples' order (label values and help are escaped,
    so no line holds a newline of its own; a value's text holds no space)."""
    (_, names, samples), text = last
    if names != label_names or not names:
        return {}
    lines = text.split("\n")[2:-1]  # the text ends with a newline
    return {
        values: line[: line.rindex(" ") + 1]
        for (values, _), line in zip(samples, lines, strict=True)
    }


def _family_text(
    name: str,
    help_: str,
    label_names: tuple[str, ...],
    samples: Samples,
    known: dict[tuple[str, ...], str],
) -> str:
    help_text = help_.replace("\\", "\\\\").replace("\n", "\\n")
    lines = [f"# HELP {name} {help_text}\n# TYPE {name} gauge\n"]
    if not label_names:
        lines += (f"{name} {go_float(value)}\n" for _, value in samples)
        return "".join(lines)
    order = sorted(range(len(label_names)), key=label_names.__getitem__)  # as the client does
    for values, value in samples:
        prefix = known.get(values)
        if prefix is None:
            labels = ",".join(f'{label_names[i]}="{_escape(values[i])}"' for i in order)
            prefix = known[values] = f"{name}{{{labels}}} "
        # `go_float` inline for the common case (100,000-240,000 lines a cycle): a finite
        # float whose repr has its point within the first six characters is its own text
        text = repr(value) if type(value) is float else ""
        if not 0 < text.find(".") <= 6:
            text = go_float(value)
        lines.append(f"{prefix}{text}\n")
    return "".join(lines)
