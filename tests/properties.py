"""How many examples a property test runs: the `full` and `quick` hypothesis profiles.

Every property states its full count (`examples(200)`; a property without one runs hypothesis'
default, 100). `make coverage`, which CI runs on every change, runs the `full` profile: each
count as stated. `make test`, the loop a developer runs after each edit, loads the `quick`
profile (`--hypothesis-profile=quick`): a quarter of each count, never fewer than five. Both
replay the failing examples hypothesis saved in `.hypothesis/` first. README, "Development".
"""

from __future__ import annotations

from hypothesis import settings

FULL = 100  # hypothesis' default max_examples: the `full` profile
QUICK = 25  # the `quick` profile: a quarter of every count

PROFILES = {"full": FULL, "quick": QUICK}
for name, count in PROFILES.items():
    settings.register_profile(name, max_examples=count)


def examples(full: int) -> int:
    """A property's example count under the loaded profile (read as its module is collected,
    after pytest loaded the profile): `full` itself, or its share under `quick`."""
    scaled = full * settings.default.max_examples // FULL
    return max(min(full, 5), scaled)
