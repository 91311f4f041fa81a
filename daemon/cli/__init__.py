"""The `langdock-budget` command line: one module per command group.

- `app`: the parser, global options and dispatch (`main`); `signals`: SIGTERM as Ctrl-C.
- `common`: what every command shares (exit codes, the clock, loading the config).
- `run` and `demo` (run against the bundled simulator, Slack printed on the console),
  `once` (one cycle and what a cycle prints), `check`, `status`, `digest`, `silence`,
  `imports` (`import` and `--reconcile`), `alerts` (`test-alert`, `rules export-prometheus`);
  `spend`, `rules_table`, `outbox_table`: the tables `once`, `status` and `demo` print.

Nothing outside this package imports from it; its modules import `common` (and `once`, `spend`),
never `app`. The commands are described in README.md "Commands".
"""

from daemon.cli.app import main

__all__ = ["main"]
