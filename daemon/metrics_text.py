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
        return _family_text(name, help_, label_names, samples, None)
    family = (help_, label_names, samples)
    last = prefixes.texts.get(name)
    if last is not None and last[0] == family and _same_zeros(last[0][2], samples):
        return last[1]
    usable = last is not None and last[0][1] == label_names and bool(label_names)
    text = _family_text(name, help_, label_names, samples, last if usable else None)
    prefixes.texts[name] = (family, text)
    return text


def _same_zeros(last: Samples, samples: Samples) -> bool:
    """Whether equal samples also print the same: 0.0 equals -0.0, whose text is "-0.0"."""
    return all(
        repr(a) == repr(b)
        for (_, a), (_, b) in zip(last, samples, strict=True)
        if b == 0  # rare: spends and limits are positive, alerts fire with 1
    )


def _family_text(
    name: str,
    help_: str,
    label_names: tuple[str, ...],
    samples: Samples,
    last: tuple[tuple[str, tuple[str, ...], Samples], str] | None,
) -> str:
    """The family's text; with ``last`` (its last samples and text, the same label names) a
    series at the same place as last time (the families keep their order from cycle to
    cycle) takes its whole line from there if its value is the same, else the text before
    its value; one that moved takes that text from a look-up made when first needed. The
    last text has a line per sample after the two header lines, in the samples' order
    (label values and help are escaped, so no line holds a newline of its own, and a
    value's text holds no space)."""
    help_text = help_.replace("\\", "\\\\").replace("\n", "\\n")
    lines = [f"# HELP {name} {help_text}\n# TYPE {name} gauge\n"]
    if not label_names:
        lines += (f"{name} {go_float(value)}\n" for _, value in samples)
        return "".join(lines)
    order = sorted(range(len(label_names)), key=label_names.__getitem__)  # as the client does
    last_samples: Samples = []
    last_lines: list[str] = []
    if last is not None:
        (_, _, last_samples), text = last
        last_lines = text.split("\n")[2:-1]  # the text ends with a newline
    placed = len(last_samples)
    moved: dict[tuple[str, ...], str] | None = None
    append = lines.append
    for i, (values, value) in enumerate(samples):
        prefix = ""
        if i < placed and last_samples[i][0] == values:
            line, old = last_lines[i], last_samples[i][1]
            # a signed zero prints as "-0.0": equal to 0.0, not the same text
            if old == value and (value or repr(old) == repr(value)):
                append(f"{line}\n")
                continue
            prefix = line[: line.rindex(" ") + 1]
        elif placed:
            if moved is None:
                moved = {
                    v: line[: line.rindex(" ") + 1]
                    for (v, _), line in zip(last_samples, last_lines, strict=True)
                }
            prefix = moved.get(values, "")
        if not prefix:
            labels = ",".join(f'{label_names[j]}="{_escape(values[j])}"' for j in order)
            prefix = f"{name}{{{labels}}} "
        # `go_float` inline for the common case (100,000-240,000 lines a cycle): a finite
        # float whose repr has its point within the first six characters is its own text
        text = repr(value) if type(value) is float else ""
        if not 0 < text.find(".") <= 6:
            text = go_float(value)
        append(f"{prefix}{text}\n")
    return "".join(lines)
