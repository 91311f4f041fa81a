"""`langdock-budget status`: what the store knows, without network and without writing."""

from __future__ import annotations

import argparse
from typing import Any

from daemon.cli.common import EXIT_OK, AddCommand, load, utc_now
from daemon.cli.outbox_table import render_outbox
from daemon.cli.rules_table import render_active, render_evaluations, render_silences
from daemon.cli.spend import render_report, spend_report
from daemon.cycle import evaluate_rules, readiness, refine_pace
from daemon.logs import redact
from daemon.notify import silence_matcher
from daemon.state import leader_line, open_store, store_exists, store_name


def add_parser(sub: Any, command: AddCommand) -> None:
    command(
        sub,
        "status",
        "spend from the store; no network",
        cmd_status,
        description="What the store knows, without network and without writing: spend per key"
        " and per model, the rules' results, active alerts and silences, and when the last"
        " fetches succeeded.",
    )


def cmd_status(args: argparse.Namespace) -> int:
    config = load(args)
    if not store_exists(config):
        print(f"no store at {store_name(config)} yet: run `langdock-budget once` first")
        return EXIT_OK
    store = open_store(config)
    try:
        now = utc_now()
        print(render_report(spend_report(store, now, config.tz)))
        print()
        silences = store.silences(now)
        key_names = store.api_key_names()
        labels = {key_id: f"{name} ({key_id})" for key_id, name in key_names.items()}
        silenced_key = silence_matcher(silences, key_names, now)
        silenced = silenced_key.state
        ready = readiness(store, config, now)  # read once: the tables and the backfill line
        if config.rules:
            # one evaluation feeds both tables, so they agree: the alerts as of now
            result = evaluate_rules(store, config, now, persist=False, ready=ready)
            print(render_evaluations(result, config.tz, silenced=silenced))
            print()
            print(
                render_active(
                    result.states,
                    config.tz,
                    labels=labels,
                    silenced=silenced,
                    warming=result.warming,
                )
            )
            print()
        if silences:
            print(render_silences(silences, config.tz))
            print()
        waiting = store.outbox_waiting()
        print(render_outbox(waiting, config.tz, now, labels=labels, silenced=silenced_key))
        print()
        for export in ("api-keys", "models"):
            last = store.last_success(export)
            age = f"{(now - last).total_seconds() / 60:.0f} min ago" if last else "never"
            print(f"last successful {export} fetch: {age}")
        failed = [f for f in store.last_fetches(20) if not f.ok]
        if failed:
            latest = redact(failed[0].message or "")
            print(f"recent fetch failures: {len(failed)} (latest: {latest})")
        print(f"backfill: {ready.progress.describe(refine_pace(config))}")
        if config.state.url is not None:
            print(leader_line(config))
    finally:
        store.close()
    return EXIT_OK
