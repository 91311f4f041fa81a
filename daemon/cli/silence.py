"""`langdock-budget silence add|list|expire`: keep Slack quiet for a rule (and member glob)."""

from __future__ import annotations

import argparse
import os
import sys
from fnmatch import fnmatchcase
from typing import Any

from daemon.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, AddCommand, load, utc_now
from daemon.cli.rules_table import render_silences
from daemon.rules.durations import parse_duration
from daemon.state import open_store, store_exists


def add_parser(sub: Any, command: AddCommand) -> None:
    silence = command(
        sub,
        "silence",
        "keep Slack quiet for a rule (state and metrics still tracked)",
        description="Keep Slack quiet for a rule, or for some of its members, for a while."
        " Alerts are still evaluated, kept in the store, shown by `status` and counted in"
        " the metrics (langdock_alert_silenced); only their messages are held back.",
    )
    actions = silence.add_subparsers(dest="silence_command", required=True, metavar="ACTION")
    add = command(
        actions,
        "add",
        "silence a rule (and member)",
        cmd_silence_add,
        description="Silence a rule's Slack messages until --for has passed. --member limits it"
        " to the keys (by id or name) or models its glob matches; a glob that matches nothing"
        " seen so far gets a warning, and the silence is created all the same.",
    )
    add.add_argument("--rule", required=True, help="rule name")
    add.add_argument("--member", help="glob on the key name or id, or the model (default: all)")
    add.add_argument("--for", dest="duration", required=True, help="how long, e.g. 24h, 3d")
    add.add_argument("--reason", required=True, help="why (shown in status)")
    add.add_argument(
        "--by", default=os.environ.get("USER"), help="who (shown in status; default: $USER)"
    )
    listing = command(
        actions,
        "list",
        "active silences",
        cmd_silence_list,
        description="List the active silences (with --all, the expired ones too): id, rule,"
        " member glob, until when, and why.",
    )
    listing.add_argument("--all", action="store_true", help="include expired ones")
    expire = command(
        actions,
        "expire",
        "end a silence now",
        cmd_silence_expire,
        description="End a silence now (its id is in `silence list`). Exit 1 when it is"
        " unknown or already over.",
    )
    expire.add_argument("id", type=int)


def cmd_silence_add(args: argparse.Namespace) -> int:
    config = load(args)
    rules = {rule.name: rule for rule in config.rules}
    if args.rule not in rules:
        names = ", ".join(sorted(rules)) or "(none)"
        print(
            f"error: no rule named {args.rule!r} in {config.source}; rules: {names}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        print(f"error: --for: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    now = utc_now()
    store = open_store(config)
    try:
        silence_id = store.add_silence(
            args.rule, args.member, now, now + duration, args.reason, args.by
        )
        key_names, models = store.api_key_names(), store.models()
    finally:
        store.close()
    until = (now + duration).astimezone(config.tz)
    print(
        f"silence {silence_id}: {args.rule}{' / ' + args.member if args.member else ''}"
        f" until {until:%Y-%m-%d %H:%M %Z}"
    )
    if args.member is not None:
        warning = unmatched_member(args.member, rules[args.rule].each, key_names, models)
        if warning is not None:
            print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def unmatched_member(
    glob: str, each: str | None, key_names: dict[str, str], models: list[str]
) -> str | None:
    """A warning when ``glob`` matches no member seen so far (as `Silence.matches` matches:
    a key by id or name, a model by name), or None. A rule with ``each`` has members of that
    kind only; any other rule is matched against both."""
    keys = each in (None, "api_key")
    model = each in (None, "model")
    if keys and any(fnmatchcase(k, glob) or fnmatchcase(n, glob) for k, n in key_names.items()):
        return None
    if model and any(fnmatchcase(m, glob) for m in models):
        return None
    kinds = []
    if keys:
        kinds.append(f"API key (by id or name) of the {len(key_names)} seen")
    if model:
        kinds.append(f"model of the {len(models)} seen")
    what = " or ".join(kinds)
    return (
        f"--member {glob!r} matches no {what} so far; the silence is created and applies"
        " once a member matches (check the spelling: globs are case-sensitive)"
    )


def cmd_silence_list(args: argparse.Namespace) -> int:
    config = load(args)
    if not store_exists(config):
        print("no silences (no store yet)")
        return EXIT_OK
    store = open_store(config)
    try:
        print(render_silences(store.silences(utc_now(), include_expired=args.all), config.tz))
    finally:
        store.close()
    return EXIT_OK


def cmd_silence_expire(args: argparse.Namespace) -> int:
    config = load(args)
    store = open_store(config)
    try:
        ended = store.expire_silence(args.id, utc_now())
    finally:
        store.close()
    print(f"silence {args.id} {'expired' if ended else 'was not active (unknown or already over)'}")
    return EXIT_OK if ended else EXIT_FAILED
