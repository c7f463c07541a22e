"""Checks of settings' values: what each setting of the table (``settings.SETTINGS``) may be.

A check is called as ``check(setting, value)`` and raises ``ValueError`` naming the setting (its name, or its
environment variable for a URL) when the value is out of range; it returns None otherwise. ``at_least`` makes the
common ones; the URL checks parse with the library that will use the URL (SQLAlchemy, redis-py, kombu).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .urls import mask_setting_url, scrub


class Named(Protocol):
    """What a check reads of a setting: its name and environment variable."""

    name: str
    env: str | None


Check = Callable[[Named, Any], None]


def check_timeout(value: Any, where: str = "inference_timeout") -> float:
    """``value`` as a timeout in seconds (a number >= 0, finite; 0 = none); else ``ValueError`` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{where} must be a number of seconds >= 0 (0 = no limit), got {value!r}")
    return float(value)


def at_least(low: int, what: str = "", note: str = "") -> Check:
    """A check refusing a number under ``low``: ``"<name> must be <what>>= <low><note>, got <value>"``."""

    def check(setting: Named, value: Any) -> None:
        if value < low:
            raise ValueError(f"{setting.name} must be {what}>= {low}{note}, got {value}")

    return check


def seconds(setting: Named, value: Any) -> None:
    """A check: a number of seconds >= 0, finite (0: no limit)."""
    check_timeout(value, setting.name)


def deadline_seconds(setting: Named, value: Any) -> None:
    """A check: a number of seconds > 0, finite (a deadline that must exist)."""
    if not 0 < check_timeout(value, setting.name):
        raise ValueError(f"{setting.name} must be a number of seconds > 0, got {value!r}")


BYTES = at_least(0, "a number of bytes ", " (0: no limit)")  # a memory bound; 0 turns it off
TTL = at_least(0, "a whole number of seconds ")  # a TTL in s; 0: none

# Dynamic batching settings, globally or per model (``model_batching``): type, lowest and highest value.
BATCHING_LIMITS: dict[str, tuple[type, int, int]] = {
    "dynamic_batching": (bool, 0, 1),
    "max_batch_size": (int, 1, 1 << 20),
    "max_queue_delay_us": (int, 0, 10_000_000),  # 10 s
    "model_instances": (int, 1, 1024),
}


def check_batching(values: Mapping[str, Any], where: str = "") -> None:
    """Refuse (``ValueError`` naming ``where``, the setting and the value) unknown batching settings, a
    ``dynamic_batching`` that is not a bool (the string "false" would read as true) and numbers out of range."""
    for key, value in values.items():
        if key not in BATCHING_LIMITS:
            raise ValueError(f"{where}{key}: not a batching setting; they are {', '.join(BATCHING_LIMITS)}")
        kind, low, high = BATCHING_LIMITS[key]
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{where}{key} must be true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{where}{key} must be a whole number from {low} to {high}, got {value!r}")


def batching_limit(setting: Named, value: Any) -> None:
    """A check: a global batching setting within ``BATCHING_LIMITS``."""
    check_batching({setting.name: value})


def per_model_batching(setting: Named, value: Mapping[str, Any]) -> None:
    """A check: ``{model name: {batching setting: value}}``, each within ``BATCHING_LIMITS``."""
    for model, own in value.items():
        if not isinstance(own, Mapping):
            raise ValueError(f"{setting.name}[{model!r}] must map setting names to values, got {own!r}")
        check_batching(own, f"{setting.name}[{model!r}].")


def parse_database_url(url: str) -> None:
    """Raise (SQLAlchemy's ``ArgumentError``) unless ``url`` is a database URL SQLAlchemy can read."""
    from sqlalchemy.engine import make_url

    make_url(url)


def parse_redis_url(url: str) -> None:
    """Raise (``ValueError``) unless ``url`` is a URL redis-py can read (``redis://``, ``rediss://``, ``unix://``)."""
    from redis.connection import parse_url

    parse_url(url)


def parse_broker_url(url: str) -> None:
    """Raise unless ``url`` is a broker URL kombu can read (``amqp://``, ``redis://``...)."""
    from kombu.utils.url import url_to_parts

    url_to_parts(url)


def parsed_by(parse: Callable[[str], object]) -> Check:
    """A check: a URL ``parse`` (the parser of the library that will use it) accepts; empty: not set. Refused with
    ``ValueError`` naming the variable, the URL masked by ``mask_setting_url`` and the reason scrubbed of its
    user-info."""

    def check(setting: Named, url: str) -> None:
        if not url:
            return
        try:
            parse(url)
        except Exception as err:  # SQLAlchemy's ArgumentError, int()'s ValueError on a port, urllib's on an IPv6 host
            raise ValueError(f"{setting.env} {mask_setting_url(url)!r} cannot be parsed: {scrub(str(err), url)}") \
                from None

    return check


def split_providers(text: str) -> list[str]:
    """``execution_providers`` (comma-separated) as the list ``InferenceSession(providers=...)`` takes."""
    return [p.strip() for p in text.split(",") if p.strip()]


def check_providers(providers: list[str]) -> list[str]:
    """Refuse (``ValueError`` naming ``execution_providers``, what was given and what this onnxruntime build
    offers) an empty list or a provider ``onnxruntime.get_available_providers()`` does not list: ONNX Runtime
    itself only warns and falls back to the CPU."""
    from .engine import available_providers  # onnxruntime is the engine's alone

    available = available_providers()
    unknown = [p for p in providers if p not in available]
    if unknown or not providers:
        given = ", ".join(unknown) if unknown else "none"
        raise ValueError(
            f"execution_providers: {given} not available in this onnxruntime; available: {', '.join(available)}"
        )
    return providers


def providers_available(setting: Named, value: str) -> None:
    """A check: every provider of the comma-separated list is in this onnxruntime build (``check_providers``)."""
    check_providers(split_providers(value))
