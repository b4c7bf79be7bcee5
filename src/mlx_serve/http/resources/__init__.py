"""HTTP resources: thin classes that parse a request, call the runtime and serialise the answer."""

from datetime import UTC, datetime


def iso_utc(ts: float) -> str:
    """A unix time as ISO 8601 in UTC, as Ollama's API writes times."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
