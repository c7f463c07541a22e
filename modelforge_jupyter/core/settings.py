"""ModelForge settings: traitlets traits whose defaults come from the documented environment variables.

Precedence, highest first: keyword arguments / traitlets config (``c.Settings.redis_url = ...``, the server's
``--ModelForgeApp.*`` traits), then the environment, then the embedded defaults below. The environment names are the
ones the product's performance documentation gives (``REDIS_URL``, ``CACHE_TTL``, ``CACHE_PREDICTION_TTL``,
``CACHE_KEY_PREFIX``, ``CACHE_PREDICTION_ENABLED``) plus ``DATABASE_URL``, ``CELERY_BROKER_URL`` and ``ENVIRONMENT``.

Embedded defaults (no services): a SQLite registry and a local-disk prediction cache under
``jupyter_data_dir()/modelforge``, shared by every process of this user on this machine; Celery in eager mode.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Float, Int, TraitError, Unicode, default
from traitlets.config import Configurable

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _env_bool(name: str, fallback: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return fallback
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; use true or false")


def _env_float(name: str, fallback: float) -> float:
    raw = os.environ.get(name)
    try:
        return fallback if raw in (None, "") else float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def check_timeout(value: Any, where: str = "inference_timeout") -> float:
    """``value`` as a timeout in seconds (a number >= 0, finite; 0 = none); else ``ValueError`` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{where} must be a number of seconds >= 0 (0 = no limit), got {value!r}")
    return float(value)


def _env_int(name: str, fallback: int) -> int:
    raw = os.environ.get(name)
    try:
        return fallback if raw in (None, "") else int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None


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


# scheme://user-info@host: the user-info runs to the last "@" of the token, so a password holding "@" or "/" is masked
# whole (over-masking a query that holds an "@" rather than leaking part of a password).
_URL_USERINFO = re.compile(r"\b(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>\S*)@")
# A query parameter whose name says it holds a secret (?password=..., &api_key=..., auth_token=...): its value runs
# to the next "&", "#" or space, a closing quote of the text around it kept.
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;][^=&#\s?;]*(?:pass|pwd|secret|token|key|auth|credential)[^=&#\s?;]*=)"
    r"(?P<value>[^&#\s]*?)(?=['\"]?(?:[&#\s]|$))",
    re.IGNORECASE,
)


def _masked_userinfo(found: re.Match) -> str:
    user, colon, _password = found["info"].partition(":")
    if "@" not in user and not colon:  # a user name alone
        return found[0]
    if "@" not in user:  # user:password, as SQLAlchemy shows it (hide_password=True)
        return f"{found['scheme']}{user}:***@"
    return f"{found['scheme']}***@"  # no telling which part is the password: none of it is shown


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``: the user-info's password
    (``scheme://user:***@host``, as SQLAlchemy's ``URL.render_as_string(hide_password=True)``; all of the user-info
    when its user part holds an ``@``) and the value of every query parameter whose name holds pass/pwd/secret/token/
    key/auth/credential (``?password=***``), which SQLAlchemy, redis-py and libpq all take as the password.
    Every message or log line that may quote a URL goes through it, including text that is not a valid URL."""
    return _SECRET_PARAM.sub(r"\g<name>***", _URL_USERINFO.sub(_masked_userinfo, text))


def mask_setting_url(url: str) -> str:
    """``url``, a URL setting's value that may not parse, masked for a message: ``mask_url``, and everything
    between ``://`` (or the start) and the last ``@`` replaced by ``***``, since which part is the password cannot be
    told (``postgresql://u:pa@ss@host`` -> ``postgresql://***@host``)."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return mask_url(head + sep + rest)


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that may be secret: the pieces of its user-info (split at ``:`` and ``@``) and the values
    of its secret-named query parameters; what a message about ``url`` must not show."""
    rest = url.partition("://")[2] or url
    pieces = re.split(r"[:@]", rest.rpartition("@")[0]) if "@" in rest else []
    pieces += [m["value"] for m in _SECRET_PARAM.finditer(url)]
    return [p for p in pieces if p]


def scrub(reason: str, url: str) -> str:
    """``reason`` (a parser's complaint about ``url``) without any part of ``url``'s user-info or secret parameters:
    a quoted fragment holding one becomes ``'***'``, any other occurrence ``***``."""
    secrets = url_secrets(url)
    if not secrets:
        return mask_url(reason)

    def quoted(found: re.Match) -> str:
        return "'***'" if any(p in found[0] for p in secrets) else found[0]

    reason = re.sub(r"'[^']*'|\"[^\"]*\"", quoted, reason)
    for piece in sorted(secrets, key=len, reverse=True):
        if len(piece) >= 3:
            reason = reason.replace(piece, "***")
    return mask_url(reason)


def _parse_database_url(url: str) -> None:
    from sqlalchemy.engine import make_url

    make_url(url)


def _parse_redis_url(url: str) -> None:
    from redis.connection import parse_url

    parse_url(url)


def _parse_broker_url(url: str) -> None:
    from kombu.utils.url import url_to_parts

    url_to_parts(url)


# URL settings: environment variable and the parser of the library that will use it (SQLAlchemy, redis-py, kombu)
URL_SETTINGS = {
    "database_url": ("DATABASE_URL", _parse_database_url),
    "redis_url": ("REDIS_URL", _parse_redis_url),
    "celery_broker_url": ("CELERY_BROKER_URL", _parse_broker_url),
}


def check_url(name: str, url: str) -> None:
    """Refuse (``ValueError`` naming the setting's variable, the URL masked by ``mask_setting_url`` and the parser's
    reason scrubbed of its user-info) a URL setting its library cannot parse. Empty: not set, nothing to parse."""
    if not url:
        return
    var, parse = URL_SETTINGS[name]
    try:
        parse(url)
    except Exception as err:  # SQLAlchemy's ArgumentError, int()'s ValueError on a port, urllib's on an IPv6 host
        raise ValueError(f"{var} {mask_setting_url(url)!r} cannot be parsed: {scrub(str(err), url)}") from None


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


# Memory bounds, in bytes; 0 turns one off (see the README's "What is bounded and how").
MEMORY_LIMITS = ("max_session_bytes", "max_constant_bytes", "max_arena_bytes", "max_output_bytes",
                 "max_request_memory_bytes")
MiB = 1 << 20


def data_dir() -> Path:
    """Where the embedded registry and cache live: ``$MODELFORGE_DATA_DIR`` or ``jupyter_data_dir()/modelforge``."""
    explicit = os.environ.get("MODELFORGE_DATA_DIR")
    if explicit:
        return Path(explicit)
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "modelforge"


class Settings(Configurable):
    """Every ModelForge setting, with its environment variable and default (see each trait's help).

    Every setting is read and checked here, once: raises ``ValueError`` naming the setting when an environment
    variable cannot be read, a URL cannot be parsed (``check_url``), a TTL is negative (a prediction's under 1 s), a
    timeout is negative or not finite, a batching setting is out of range (``check_batching``), ``max_sessions`` < 1
    or an execution provider is not available in this onnxruntime (``check_providers``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in self.trait_names(config=True):  # every environment default is parsed now, not on first use
            try:
                getattr(self, name)
            except TraitError as err:  # a default of the wrong kind: the same ValueError as any other bad setting
                raise ValueError(str(err)) from None
        for name in URL_SETTINGS:
            check_url(name, getattr(self, name))
        if self.cache_ttl < 0:  # 0: metadata is looked up on every call
            raise ValueError(f"cache_ttl must be a whole number of seconds >= 0, got {self.cache_ttl}")
        if self.cache_prediction_ttl < 1:  # Redis refuses SET ... EX 0; to cache nothing, cache_prediction_enabled
            raise ValueError(f"cache_prediction_ttl must be a whole number of seconds >= 1, got "
                             f"{self.cache_prediction_ttl}")
        if self.intra_op_num_threads < 0:
            raise ValueError(f"intra_op_num_threads must be >= 0 (0: one per physical core), got "
                             f"{self.intra_op_num_threads}")
        check_timeout(self.cache_retry_after, "cache_retry_after")
        check_batching({key: getattr(self, key) for key in BATCHING_LIMITS})
        check_timeout(self.inference_timeout)
        for name in ("database_timeout", "broker_timeout", "celery_probe_ttl", "redis_timeout"):  # 0 would mean none
            if not 0 < check_timeout(getattr(self, name), name):
                raise ValueError(f"{name} must be a number of seconds > 0, got {getattr(self, name)!r}")
        for model, own in self.model_batching.items():
            if not isinstance(own, Mapping):
                raise ValueError(f"model_batching[{model!r}] must map setting names to values, got {own!r}")
            check_batching(own, f"model_batching[{model!r}].")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        check_providers(self.providers)
        for key in MEMORY_LIMITS:
            value = getattr(self, key)
            if value < 0:
                raise ValueError(f"{key} must be a number of bytes >= 0 (0: no limit), got {value}")

    database_url = Unicode(
        config=True,
        help="SQLAlchemy URL of the model registry (env DATABASE_URL). Default: a SQLite file under the Jupyter "
        "data directory. PostgreSQL 15+: postgresql+psycopg://user@host:5432/db.",
    )
    redis_url = Unicode(
        config=True,
        help="Redis URL of the shared prediction cache (env REDIS_URL), e.g. redis://localhost:6379/0. "
        "Empty: a local-disk cache shared by the processes of this machine.",
    )
    celery_broker_url = Unicode(
        config=True,
        help="Celery broker URL (env CELERY_BROKER_URL), Redis or RabbitMQ (amqp://). Empty: tasks run eagerly "
        "in-process.",
    )
    celery_queue = Unicode(
        config=True,
        help="Queue the invalidation tasks go to; workers consume it with -Q (env MODELFORGE_CELERY_QUEUE, "
        "default modelforge).",
    )
    cache_ttl = Int(config=True, help="TTL in seconds of other cached items, e.g. model metadata (env CACHE_TTL).")
    cache_prediction_ttl = Int(
        config=True, help="TTL in seconds of each cached prediction (env CACHE_PREDICTION_TTL, default 60)."
    )
    cache_key_prefix = Unicode(config=True, help="Prefix of every cache key (env CACHE_KEY_PREFIX, default modelforge).")
    cache_prediction_enabled = Bool(
        config=True, help="Cache predictions (env CACHE_PREDICTION_ENABLED, default true)."
    )
    cache_dir = Unicode(
        config=True,
        help="Directory of the embedded local-disk prediction cache, used when redis_url is empty "
        "(env MODELFORGE_CACHE_DIR; default under the Jupyter data directory).",
    )
    redis_timeout = Float(
        config=True,
        help="Socket timeout in seconds for each cache command (env MODELFORGE_REDIS_TIMEOUT, default 0.25). Past it "
        "the cache is bypassed for cache_retry_after seconds and the prediction is served from the engine.",
    )
    cache_retry_after = Float(
        5.0, config=True,
        help="Seconds to bypass an unreachable cache, or an unreachable Celery broker (model changes then clean up "
        "inline), before trying it again.",
    )
    database_timeout = Float(
        config=True,
        help="Deadline in seconds of the PostgreSQL registry's connection (connect_timeout, whole seconds, at least "
        "2) and of unacknowledged writes to it (tcp_user_timeout), with TCP keepalives probing an idle connection "
        "(env MODELFORGE_DATABASE_TIMEOUT, default 5).",
    )
    broker_timeout = Float(
        config=True,
        help="Deadline in seconds of each call to the Celery broker, connect and every socket read and write: "
        "sending an invalidation task, the health probe (env MODELFORGE_BROKER_TIMEOUT, default 1).",
    )
    celery_probe_ttl = Float(
        config=True,
        help="Seconds health reuses the Celery probe's answer (is a worker answering?); the probe runs on a "
        "background thread, never on a request (env MODELFORGE_CELERY_PROBE_TTL, default 5).",
    )
    environment = Unicode(config=True, help="Deployment name reported by health (env ENVIRONMENT, default development).")
    max_sessions = Int(
        config=True,
        help="How many ONNX Runtime sessions the engine keeps loaded, least recently used evicted first "
        "(env MODELFORGE_MAX_SESSIONS, default 32; at least 1).",
    )
    max_session_bytes = Int(
        config=True,
        help="Memory in bytes the loaded ONNX Runtime sessions may take together, each measured when it is built "
        "(its process RSS growth, at least the model's size plus the constants it computes); past it the least "
        "recently used are unloaded, as past max_sessions (env MODELFORGE_MAX_SESSION_BYTES, default 512 MiB; 0: "
        "count only).",
    )
    max_constant_bytes = Int(
        config=True,
        help="Bytes of constants a model may compute when a session is built: what ONNX Runtime's constant folding "
        "makes of ConstantOfShape, Expand, Tile, Range... of constant inputs, and sparse constants made dense. "
        "Sized from the graph before any session exists; a model over it is refused with 400 "
        "(env MODELFORGE_MAX_CONSTANT_BYTES, default 64 MiB; 0: no check).",
    )
    max_arena_bytes = Int(
        config=True,
        help="Cap in bytes of the CPU memory arena every ONNX Runtime session of the process shares (OrtArenaCfg "
        "max_mem): the working memory of all runs in flight, and the weights ONNX Runtime re-packs when it loads a "
        "model (MatMul, Gemm, Conv), so keep max_session_bytes well under it. A run that would need more fails with "
        "413 before it allocates. Process-wide: the first engine of a process sets it "
        "(env MODELFORGE_MAX_ARENA_BYTES, default 1 GiB; 0: no cap, each session its own arena).",
    )
    max_output_bytes = Int(
        config=True,
        help="Largest answer in bytes of output tensors (a float32 value is 4 bytes; its JSON takes up to ~10 times "
        "that in Python lists and text): a larger one is refused with 413 before any JSON is built, and never cached "
        "(env MODELFORGE_MAX_OUTPUT_BYTES, default 8 MiB; 0: no limit).",
    )
    max_request_memory_bytes = Int(
        config=True,
        help="Bytes one request's run may raise the process's memory (RSS) above its steady state, what ONNX "
        "Runtime holds outside its arena included (strings copied in Loop/Scan bodies...): while runs are in flight "
        "the watchdog reads the RSS, and past it stops the run whose thread took the most pages, answering 413 "
        "(env MODELFORGE_MAX_REQUEST_MEMORY_BYTES, default 1 GiB; 0: not watched).",
    )
    intra_op_num_threads = Int(
        config=True,
        help="ONNX Runtime intra-op threads per session (env MODELFORGE_INTRA_OP_NUM_THREADS, default 1: one thread "
        "per run, so N loaded models never mean N thread pools; 0 lets ONNX Runtime use one per physical core).",
    )
    execution_providers = Unicode(
        config=True,
        help="Comma-separated ONNX Runtime execution providers, in priority order "
        "(env MODELFORGE_EXECUTION_PROVIDERS, default CPUExecutionProvider). One this onnxruntime build does not "
        "have is refused (check_providers).",
    )
    inference_timeout = Float(
        config=True,
        help="Longest time in seconds one model run may take (env MODELFORGE_INFERENCE_TIMEOUT, default 30; 0 = no "
        "limit). Past it the run is stopped (ONNX Runtime's RunOptions.terminate, checked between nodes and loop "
        "iterations) and predict raises InferenceTimeoutError (HTTP 504); predict's timeout= overrides it per call.",
    )

    dynamic_batching = Bool(
        config=True,
        help="Coalesce concurrent predictions of one model version into one session run, as Triton's dynamic "
        "batcher (env MODELFORGE_DYNAMIC_BATCHING, default false). Only one-input models whose input and tensor "
        "outputs all have a dynamic leading dimension are batched (batching.batchable).",
    )
    max_batch_size = Int(
        config=True, help="Rows per batched run at most (env MODELFORGE_MAX_BATCH_SIZE, default 64)."
    )
    max_queue_delay_us = Int(
        config=True,
        help="How long the first request of a batch waits for others, in µs (env MODELFORGE_MAX_QUEUE_DELAY_US, "
        "default 500).",
    )
    model_instances = Int(
        config=True,
        help="With dynamic batching, how many batches of one model run at once, as Triton's instance_group count "
        "(env MODELFORGE_MODEL_INSTANCES, default 1): while they are busy, arriving requests queue and form the next "
        "batch. Without batching, every request runs at once on its own thread.",
    )
    model_batching = Dict(
        config=True,
        help="Per-model overrides of dynamic_batching / max_batch_size / max_queue_delay_us / model_instances, by "
        "model name, e.g. "
        '{"mlp": {"dynamic_batching": true, "max_queue_delay_us": 2000}} (env MODELFORGE_MODEL_BATCHING, JSON).',
    )

    @default("database_url")
    def _default_database_url(self) -> str:
        return os.environ.get("DATABASE_URL") or f"sqlite:///{data_dir() / 'registry.db'}"

    @default("redis_url")
    def _default_redis_url(self) -> str:
        return os.environ.get("REDIS_URL", "")

    @default("celery_broker_url")
    def _default_celery_broker_url(self) -> str:
        return os.environ.get("CELERY_BROKER_URL", "")

    @default("celery_queue")
    def _default_celery_queue(self) -> str:
        return os.environ.get("MODELFORGE_CELERY_QUEUE") or "modelforge"

    @default("cache_ttl")
    def _default_cache_ttl(self) -> int:
        return _env_int("CACHE_TTL", 3600)

    @default("cache_prediction_ttl")
    def _default_cache_prediction_ttl(self) -> int:
        return _env_int("CACHE_PREDICTION_TTL", 60)

    @default("cache_key_prefix")
    def _default_cache_key_prefix(self) -> str:
        return os.environ.get("CACHE_KEY_PREFIX") or "modelforge"

    @default("cache_prediction_enabled")
    def _default_cache_prediction_enabled(self) -> bool:
        return _env_bool("CACHE_PREDICTION_ENABLED", True)

    @default("cache_dir")
    def _default_cache_dir(self) -> str:
        return os.environ.get("MODELFORGE_CACHE_DIR") or str(data_dir() / "cache")

    @default("redis_timeout")
    def _default_redis_timeout(self) -> float:
        return _env_float("MODELFORGE_REDIS_TIMEOUT", 0.25)

    @default("database_timeout")
    def _default_database_timeout(self) -> float:
        return _env_float("MODELFORGE_DATABASE_TIMEOUT", 5.0)

    @default("broker_timeout")
    def _default_broker_timeout(self) -> float:
        return _env_float("MODELFORGE_BROKER_TIMEOUT", 1.0)

    @default("celery_probe_ttl")
    def _default_celery_probe_ttl(self) -> float:
        return _env_float("MODELFORGE_CELERY_PROBE_TTL", 5.0)

    @default("environment")
    def _default_environment(self) -> str:
        return os.environ.get("ENVIRONMENT") or "development"

    @default("max_sessions")
    def _default_max_sessions(self) -> int:
        return _env_int("MODELFORGE_MAX_SESSIONS", 32)

    @default("max_session_bytes")
    def _default_max_session_bytes(self) -> int:
        return _env_int("MODELFORGE_MAX_SESSION_BYTES", 512 * MiB)

    @default("max_constant_bytes")
    def _default_max_constant_bytes(self) -> int:
        return _env_int("MODELFORGE_MAX_CONSTANT_BYTES", 64 * MiB)

    @default("max_arena_bytes")
    def _default_max_arena_bytes(self) -> int:
        return _env_int("MODELFORGE_MAX_ARENA_BYTES", 1024 * MiB)

    @default("max_output_bytes")
    def _default_max_output_bytes(self) -> int:
        return _env_int("MODELFORGE_MAX_OUTPUT_BYTES", 8 * MiB)

    @default("max_request_memory_bytes")
    def _default_max_request_memory_bytes(self) -> int:
        return _env_int("MODELFORGE_MAX_REQUEST_MEMORY_BYTES", 1024 * MiB)

    @default("intra_op_num_threads")
    def _default_intra_op_num_threads(self) -> int:
        return _env_int("MODELFORGE_INTRA_OP_NUM_THREADS", 1)

    @default("execution_providers")
    def _default_execution_providers(self) -> str:
        return os.environ.get("MODELFORGE_EXECUTION_PROVIDERS") or "CPUExecutionProvider"

    @default("inference_timeout")
    def _default_inference_timeout(self) -> float:
        return _env_float("MODELFORGE_INFERENCE_TIMEOUT", 30.0)

    @default("dynamic_batching")
    def _default_dynamic_batching(self) -> bool:
        return _env_bool("MODELFORGE_DYNAMIC_BATCHING", False)

    @default("max_batch_size")
    def _default_max_batch_size(self) -> int:
        return _env_int("MODELFORGE_MAX_BATCH_SIZE", 64)

    @default("max_queue_delay_us")
    def _default_max_queue_delay_us(self) -> int:
        return _env_int("MODELFORGE_MAX_QUEUE_DELAY_US", 500)

    @default("model_instances")
    def _default_model_instances(self) -> int:
        return _env_int("MODELFORGE_MODEL_INSTANCES", 1)

    @default("model_batching")
    def _default_model_batching(self) -> dict:
        raw = os.environ.get("MODELFORGE_MODEL_BATCHING")
        try:
            value = json.loads(raw) if raw else {}
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ValueError(f"MODELFORGE_MODEL_BATCHING={raw!r} is not a JSON object (model name: its settings)")
        return value

    def batching_for(self, model_name: str) -> tuple[bool, int, int, int]:
        """(dynamic_batching, max_batch_size, max_queue_delay_us, model_instances) for one model: its overrides, else
        the globals."""
        own = self.model_batching.get(model_name, {})
        return (
            bool(own.get("dynamic_batching", self.dynamic_batching)),
            int(own.get("max_batch_size", self.max_batch_size)),
            int(own.get("max_queue_delay_us", self.max_queue_delay_us)),
            int(own.get("model_instances", self.model_instances)),
        )

    @property
    def providers(self) -> list[str]:
        """``execution_providers`` as the list ``InferenceSession(providers=...)`` takes."""
        return [p.strip() for p in self.execution_providers.split(",") if p.strip()]
