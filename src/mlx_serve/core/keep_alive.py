"""Keep-alive: how long an idle model stays loaded. One type, parsed one way, for the `keep_alive`
setting and for a request's `keep_alive` field (Ollama's meaning and syntax).

A number of seconds or a duration such as "10m", "1h30m", "300ms"; 0 unloads once idle; a negative value
keeps the model until it is unloaded by hand (-1 is returned for every negative value).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

MAX_SECONDS = 365 * 24 * 3600.0  # a year: longer is "until unloaded", which a negative value says
FOREVER = -1.0
_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any) -> float | None:
    """Seconds, -1 for "until unloaded", or None for "not given"."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError('must be a number of seconds or a duration such as "10m"')
    if isinstance(value, str):
        value = _duration_seconds(value.strip())
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError("must be a finite number of seconds")
    if seconds < 0:
        return FOREVER
    if seconds > MAX_SECONDS:
        raise ValueError(f"must be at most {MAX_SECONDS:.0f} seconds (a year); a negative value keeps it loaded")
    return seconds


def _duration_seconds(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)  # "300", "-1"
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        raise ValueError(f'{text!r} is not a duration (examples: "30s", "10m", "1h30m", "-1")')
    return sign * total


def describe(seconds: float) -> str:
    """A keep-alive for people: "30m", "1h30m", "until unloaded", "none"."""
    if seconds < 0:
        return "until unloaded"
    if seconds == 0:
        return "none"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or f"{seconds:g}s"


KeepAlive = Annotated[
    float | None,
    BeforeValidator(parse_keep_alive),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}],
            "description": 'Seconds, or a duration such as "10m"; negative: keep until unloaded.',
        }
    ),
]
