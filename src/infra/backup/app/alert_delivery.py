"""Sending one alert to one target: the message formats (generic JSON webhook, Telegram
``sendMessage``, Discord, Slack, a command) and the HTTP request, with a short timeout.

A failure is a :class:`AlertDeliveryError` whose text never holds the target's secret (URL,
token): error texts are scrubbed before they are raised (see ``docs/ALERTS.md``).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from src.infra.backup._version import __version__
from src.infra.backup.app.alert_settings import AlertTarget

Status = Literal["firing", "recovered", "test"]
DISCORD_LIMIT = 2000  # characters of a Discord message
TELEGRAM_LIMIT = 4096


class AlertDeliveryError(Exception):
    """An alert did not reach its target (the message names the target, never its secret)."""


@dataclass(frozen=True)
class Alert:
    """One message: an incident that opened (``firing``), one that cleared (``recovered``),
    or ``peak-backup alert test``."""

    event: str  # backup_failed, overdue, damage, replica_lag, test
    status: Status
    key: str  # the incident, e.g. "backup_failed:automatic"
    severity: str  # critical, warning, info
    text: str
    repository: str
    host: str
    time: datetime
    suppressed: int = 0  # messages the rate limit dropped before this one

    @property
    def headline(self) -> str:
        """The one text every chat format shows."""
        mark = {"firing": "ALERT", "recovered": "RECOVERED", "test": "TEST"}[self.status]
        note = f" ({self.suppressed} earlier alerts were rate-limited)" if self.suppressed else ""
        return (
            f"[peak-backup {mark}] {self.text} (repository {self.repository}, "
            f"host {self.host}){note}"
        )

    def to_json(self) -> dict[str, Any]:
        """The generic webhook's body (and the command's stdin)."""
        return {
            "event": self.event,
            "status": self.status,
            "severity": self.severity,
            "incident": self.key,
            "text": self.text,
            "repository": self.repository,
            "host": self.host,
            "time": self.time.isoformat(),
            "suppressed": self.suppressed,
        }


def scrub(text: str, target: AlertTarget) -> str:
    """``text`` with the target's secrets replaced by ``***``."""
    for secret in target.secrets:
        text = text.replace(secret, "***")
    return text


def _post_json(url: str, body: dict[str, Any], timeout: float) -> None:
    import urllib.request  # only a process that sends an alert pays for it

    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"peak-backup/{__version__}"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read(65536)


def _run_command(target: AlertTarget, alert: Alert) -> None:
    env = dict(os.environ)
    env.update(
        PEAK_ALERT_EVENT=alert.event,
        PEAK_ALERT_STATUS=alert.status,
        PEAK_ALERT_INCIDENT=alert.key,
        PEAK_ALERT_SEVERITY=alert.severity,
        PEAK_ALERT_TEXT=alert.headline,
        PEAK_ALERT_REPOSITORY=alert.repository,
    )
    try:
        done = subprocess.run(
            list(target.command),
            input=json.dumps(alert.to_json()).encode(),
            env=env,
            capture_output=True,
            timeout=target.timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AlertDeliveryError(f"timed out after {target.timeout:g} s") from None
    except OSError as exc:
        raise AlertDeliveryError(f"cannot run {target.command[0]!r}: {exc.strerror}") from None
    if done.returncode != 0:
        raise AlertDeliveryError(f"the command exited with status {done.returncode}")


def deliver(target: AlertTarget, alert: Alert) -> None:
    """Send ``alert`` to ``target`` now (in the caller's thread); :class:`AlertDeliveryError`
    if it did not arrive."""
    if target.format == "command":
        _run_command(target, alert)
        return
    if target.format == "telegram":
        url = f"{target.api_url}/bot{target.token}/sendMessage"
        body: dict[str, Any] = {
            "chat_id": target.chat_id,
            "text": alert.headline[:TELEGRAM_LIMIT],
            "disable_web_page_preview": True,
        }
    elif target.format == "discord":
        assert target.url is not None
        url, body = target.url, {"content": alert.headline[:DISCORD_LIMIT]}
    elif target.format == "slack":
        assert target.url is not None
        url, body = target.url, {"text": alert.headline}
    else:
        assert target.url is not None
        url, body = target.url, alert.to_json()
    import urllib.error

    try:
        _post_json(url, body, target.timeout)
    except urllib.error.HTTPError as exc:
        raise AlertDeliveryError(f"HTTP {exc.code}") from None
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
        reason = getattr(exc, "reason", exc)
        raise AlertDeliveryError(scrub(f"{type(exc).__name__}: {reason}", target)) from None
