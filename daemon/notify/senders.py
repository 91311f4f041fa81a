"""What a sender is (`Sender`) and what an answer means (`SendResult`); the console sender of
`demo` (messages printed, readable or as Block Kit JSON). The Slack sender is
`daemon.notify.slack.sender`; when to send and retry is `daemon.notify.deliver`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, Protocol

from daemon.store import OutboxItem

SEND_TIMEOUT = 30  # s: Slack may answer after 10 s and still post; the SDK's default too
EVENT_TYPE = "langdock_budget_alert"  # message metadata: which outbox row a message is


@dataclass(frozen=True)
class SendResult:
    ok: bool
    ts: str | None = None
    channel: str | None = None
    retry_after: float | None = None
    error: str = ""
    permanent: bool = False
    maybe_sent: bool = False  # Slack may have posted it: look before posting again
    in_flight: bool = False  # ...and may still be posting it: don't look right away
    found: bool = False  # an earlier attempt had arrived; nothing was posted now
    elsewhere: bool = False  # not this process's to send (another replica has it): untouched


@dataclass(frozen=True)
class Attempt:
    """The outbox row a send is for. Its id and queue time go into the message metadata;
    ``check``: an earlier attempt may have arrived, look for it before posting; ``channel``:
    the route's channel id when known (history is read by id, not by name)."""

    outbox_id: int
    queued_at: datetime
    check: bool = False
    channel: str | None = None

    def payload(self) -> dict[str, int]:
        return {"outbox_id": self.outbox_id, "queued_at": int(self.queued_at.timestamp())}

    def metadata(self) -> dict[str, Any]:
        return {"event_type": EVENT_TYPE, "event_payload": self.payload()}

    def matches(self, message: Mapping[str, Any]) -> bool:
        meta = message.get("metadata")
        if not isinstance(meta, Mapping) or meta.get("event_type") != EVENT_TYPE:
            return False
        payload = meta.get("event_payload")
        return isinstance(payload, Mapping) and all(
            str(payload.get(k)) == str(v) for k, v in self.payload().items()
        )


class Sender(Protocol):
    def send(
        self,
        route: str,
        payload: dict[str, Any],
        thread: tuple[str, str] | None,
        attempt: Attempt | None = None,
    ) -> SendResult: ...

    def target(self, route: str) -> str | None:
        """`route_target` under the sender's config (None: not a Slack route)."""
        ...

    def route_now(self, item: OutboxItem) -> str | None:
        """`current_route` under the sender's config."""
        ...


class ConsoleSender:
    """`demo`: messages go to stdout, readable (or as Block Kit JSON)."""

    def __init__(self, stream: IO[str] | None = None, as_json: bool = False) -> None:
        self._stream = stream
        self._json = as_json

    def target(self, route: str) -> str | None:
        return None

    def route_now(self, item: OutboxItem) -> str | None:
        return None

    def send(
        self,
        route: str,
        payload: dict[str, Any],
        thread: tuple[str, str] | None,
        attempt: Attempt | None = None,
    ) -> SendResult:
        stream = self._stream or sys.stdout
        if self._json:
            print(json.dumps(payload, indent=2, ensure_ascii=False), file=stream, flush=True)
        else:
            print(render_readable(payload), file=stream, flush=True)
        return SendResult(True)


def render_readable(payload: dict[str, Any]) -> str:
    """A Block Kit message as plain lines, for terminals."""
    lines = ["┌─ Slack message " + "─" * 50]
    for block in payload.get("blocks", []):
        kind = block.get("type")
        if kind == "header":
            lines.append(f"│ {block['text']['text']}")
        elif kind == "section":
            if "text" in block:
                lines += [f"│ {line}" for line in block["text"]["text"].splitlines()]
            for item in block.get("fields", []):
                label, _, value = item["text"].partition("\n")
                lines.append(f"│   {label.strip('*')}: {value}")
        elif kind == "context":
            lines += [f"│ ({e['text']})" for e in block.get("elements", [])]
    lines.append("└" + "─" * 66)
    return "\n".join(lines)
