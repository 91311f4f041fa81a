"""Scale benchmark: one full cycle against a 10,000-key x 10-model workspace with 200 rules.

A static stand-in for Langdock runs in a child process and serves a pre-built 100,000-row
grouped api-keys CSV (and a models CSV) for every export, so the figure is the daemon's own
work: fetch, parse, store, evaluate 200 rules (many `each: api_key`), build and render the
metrics snapshot. Prints wall time and the process's peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import resource
import tempfile
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

KEYS, MODELS = 10_000, 10


def _csvs() -> tuple[bytes, bytes]:
    lines = [
        "api_key_id,api_key_name,model,requests,total_cost_usd,sum_prompt_tokens,"
        "sum_completion_tokens"
    ]
    for k in range(KEYS):
        for m in range(MODELS):
            lines.append(
                f"key_{k:05d},team-{k % 97}-key-{k},model-{m},{(k + m) % 50 + 1},"
                f"{(k * MODELS + m + 1) / 7919:.9f},{k * 10 + m},{k + m}"
            )
    models = ["name,provider,bring_your_keys,requests,error_count,avg_response_time_ms"]
    models += [f"model-{m},prov,false,{1000 + m},{m},{900 + m}" for m in range(MODELS)]
    return ("\r\n".join(lines) + "\r\n").encode(), ("\r\n".join(models) + "\r\n").encode()


def serve(port_queue: Any) -> None:
    keys_csv, models_csv = _csvs()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            return

        def _send(self, data: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            which = "keys" if "api-keys" in self.path else "models"
            count = KEYS * MODELS if which == "keys" else MODELS
            _, port = cast(tuple[str, int], self.server.server_address)
            host = f"http://127.0.0.1:{port}"
            body = {
                "success": True,
                "data": {"downloadUrl": f"{host}/dl/{which}", "recordCount": count},
            }
            self._send(json.dumps(body).encode(), "application/json")

        def do_GET(self) -> None:
            self._send(keys_csv if self.path.endswith("keys") else models_csv, "text/csv")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def rules_yaml() -> str:
    rules = []
    windows = ["day", "week", "month", "24h", "7d", "30d"]
    for i in range(100):
        # per-key spend in this data runs from ~$0 to ~$250: about 1 % of keys exceed these
        rules.append(
            f"  - {{name: key-budget-{i}, kind: budget, each: api_key,"
            f" window: {windows[i % 6]}, limit_usd: {248 + i % 3}}}"
        )
    for i in range(50):
        rules.append(
            f"  - {{name: ws-budget-{i}, kind: budget, window: {windows[i % 3]},"
            f" limit_usd: {2_000_000 + i}, forecast: true}}"
        )
    for i in range(50):
        rules.append(
            f"  - {{name: model-spike-{i}, kind: anomaly, each: model, window: 1h,"
            f" baseline: 1d, min_baseline_points: 1}}"
        )
    return "rules:\n" + "\n".join(rules) + "\n"


async def one_cycle(config_path: Path) -> tuple[float, float, int, int]:
    from daemon.config import load_config
    from daemon.cycle import make_client, run_cycle
    from daemon.logs import configure_logging
    from daemon.metrics import render
    from daemon.service import Daemon
    from daemon.store import Store

    configure_logging("json", "warning")
    config = load_config(config_path)
    store = Store.open(config.state.path, exclusive=True)
    daemon = Daemon(config_path, config, store)
    started, cpu_started = time.perf_counter(), time.process_time()
    async with make_client(config) as client:
        result = await run_cycle(config, store, client, lambda: datetime.now(UTC), metrics=True)
    daemon.publish(result)
    text = render(daemon.collector)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    store.close()
    assert result.poll.ok, result.poll.failures
    return elapsed, cpu, result.poll.rows, text.count("\n")


def main() -> None:
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=serve, args=(ports,), daemon=True)
    server.start()
    port = ports.get(timeout=120)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(
            f"langdock: {{base_url: 'http://127.0.0.1:{port}', api_key: bench,"
            " max_requests_per_minute: 250}\n"
            "timezone: Europe/Berlin\npoll: {backfill: 1h}\nstate: {path: state.db}\n"
            + rules_yaml()
        )
        elapsed, cpu, rows, lines = asyncio.run(one_cycle(config))
    server.terminate()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"scale: once cycle, {rows:,} rows, 200 rules, {lines:,} metric lines;"
        f" {cpu:.2f} s CPU in the daemon's process"
    )
    print(
        f"{'scale: cycle wall time':<34} {elapsed:>10.2f} s      target <= 2 s      ratio"
        f" {elapsed / 2:.2f}"
    )
    print(f"{'scale: peak RSS':<34} {peak:>10.1f} MB     target <= 150 MB   ratio {peak / 150:.2f}")
    # wall time is only comparable on an otherwise idle machine: wall well above CPU, or a load
    # past the cores, means the cycle waited for other processes
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    print(f"{'scale: load average (1 min)':<34} {load:>10.2f}        on {cores} cores")


if __name__ == "__main__":
    main()
