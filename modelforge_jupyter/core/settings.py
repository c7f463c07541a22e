"""ModelForge settings: one table, ``SETTINGS``, from which every door's configuration is generated.

Each row (``Setting``) gives a setting's name, traitlets type, environment variable, default, help (with its unit)
and the check its value must pass. From the table come: the traits of ``Settings`` (their defaults read from the
environment), ``SettingsTraits`` (the same settings left unset, inherited by the server's ``ModelForgeApp`` and the
kernel's ``ModelForgeMagics``), the environment a server exports to its kernels (``Settings.environ``), one setting
read alone from the environment (``from_environment``: the Celery worker's broker and queue) and the README's table
(``markdown_table``). A setting added as a row is configurable everywhere with no other change.

Precedence, highest first: keyword arguments / traitlets config (``c.Settings.redis_url = ...``,
``--ModelForgeApp.redis_url=...``, ``%config ModelForgeMagics.redis_url = ...``), then the environment, then the
default. Embedded defaults (no services): a SQLite registry and a local-disk prediction cache under
``jupyter_data_dir()/modelforge``, shared by every process of this user on this machine; Celery in eager mode.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Float, Int, TraitError, TraitType, Unicode, default
from traitlets.config import Configurable

from .checks import (
    BYTES,
    Check,
    TTL,
    at_least,
    batching_limit,
    deadline_seconds,
    parse_broker_url,
    parse_database_url,
    parse_redis_url,
    parsed_by,
    per_model_batching,
    providers_available,
    seconds,
    split_providers,
)
from .urls import mask_setting_url, mask_url  # noqa: F401  (re-exported: tests import them from here)

MiB, GiB = 1 << 20, 1 << 30


# -- reading a variable: None means "not set, take the default" ---------------------------------------------------
def _read_text(var: str, raw: str) -> str | None:
    return raw or None


def _read_int(var: str, raw: str) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a whole number") from None


def _read_float(var: str, raw: str) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a number") from None


def _read_bool(var: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{var}={raw!r} is not a boolean; use true or false")


def _read_json_object(var: str, raw: str) -> dict | None:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"{var}={raw!r} is not a JSON object")
    return value or None


READERS: dict[type[TraitType], Callable[[str, str], Any]] = {
    Unicode: _read_text, Int: _read_int, Float: _read_float, Bool: _read_bool, Dict: _read_json_object,
}


def env_text(value: Any) -> str:
    """A setting's value as its variable is read back: true/false, JSON for dicts, else ``str()``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


# -- the table ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One setting: everything about it that any door or document needs.

    ``kind``: the traitlets type (``Unicode``, ``Int``, ``Float``, ``Bool`` or ``Dict``), which also says how its
    variable is read (``READERS``). ``env``: its environment variable, or None. ``default``: a value, or a function
    computing it when first read (a path under the Jupyter data directory). ``help``: what it does, with its unit
    (s, ms, µs, bytes) and what 0 or empty means. ``check``: raises ``ValueError`` naming the setting when a value is
    out of range. ``shown``: the default as documents show it, when the value itself would not say it.
    """

    name: str
    kind: type[TraitType]
    env: str | None
    default: Any
    help: str
    check: Check | None = None
    shown: str = ""

    def default_value(self) -> Any:
        """The default: computed now when ``default`` is a function; a copy of it otherwise."""
        return self.default() if callable(self.default) else copy.copy(self.default)

    def read(self) -> Any:
        """The value this process's environment gives (its variable read as ``kind``), else the default. Raises
        ``ValueError`` naming the variable when it cannot be read as ``kind``."""
        raw = os.environ.get(self.env) if self.env else None
        value = None if raw is None else READERS[self.kind](self.env, raw)
        return self.default_value() if value is None else value

    @property
    def shown_default(self) -> str:
        """The default as text: ``shown``, else the value (bytes with their MiB or GiB, floats without ``.0``)."""
        value = self.default
        if self.shown or value == "":
            return self.shown or "empty"
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, int) and not isinstance(value, bool) and value >= MiB and value % MiB == 0:
            return f"{value} ({value // GiB} GiB)" if value % GiB == 0 else f"{value} ({value // MiB} MiB)"
        return env_text(value)

    @property
    def full_help(self) -> str:
        """``help``, then the variable and the default: the help every door's trait shows."""
        where = f"Environment variable: {self.env}. " if self.env else ""
        return f"{self.help} {where}Default: {self.shown_default}."

    def trait(self) -> TraitType:
        """The ``Settings`` trait (its default comes from ``read``, given by ``Settings``)."""
        return self.kind(config=True, help=self.full_help)

    def unset_trait(self) -> TraitType:
        """A door's trait: the same type and help, None (unset: the environment's value, else the default)."""
        help = f"{self.full_help} Unset: the environment's value, else the default."
        return self.kind(default_value=None, allow_none=True, config=True, help=help)


def data_dir() -> Path:
    """Where the embedded registry and cache live: ``$MODELFORGE_DATA_DIR`` or ``jupyter_data_dir()/modelforge``."""
    explicit = os.environ.get("MODELFORGE_DATA_DIR")
    if explicit:
        return Path(explicit)
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "modelforge"


# The table. To add a setting: one row (name, trait type, environment variable or None, default, help with its unit,
# check), then `.venv/bin/python scripts/readme_settings.py` writes it into the README. Every door has it from then on.
SETTINGS: tuple[Setting, ...] = (
    Setting("database_url", Unicode, "DATABASE_URL", lambda: f"sqlite:///{data_dir() / 'registry.db'}",
            "SQLAlchemy URL of the model registry; for PostgreSQL 15+: postgresql+psycopg://user@host:5432/db.",
            parsed_by(parse_database_url), shown="sqlite:///<jupyter data dir>/modelforge/registry.db"),
    Setting("redis_url", Unicode, "REDIS_URL", "",
            "Redis URL of the shared prediction cache, e.g. redis://localhost:6379/0. Empty: a local-disk cache shared "
            "by the processes of this machine (cache_dir).", parsed_by(parse_redis_url)),
    Setting("celery_broker_url", Unicode, "CELERY_BROKER_URL", "",
            "Celery broker URL, Redis or RabbitMQ (amqp://). Empty: tasks run eagerly in-process.",
            parsed_by(parse_broker_url)),
    Setting("celery_queue", Unicode, "MODELFORGE_CELERY_QUEUE", "modelforge",
            "Queue the invalidation tasks go to; workers consume it with -Q."),
    Setting("cache_ttl", Int, "CACHE_TTL", 3600,
            "TTL in seconds of other cached items, e.g. model metadata; 0: looked up on every call.", TTL),
    Setting("cache_prediction_ttl", Int, "CACHE_PREDICTION_TTL", 60,
            "TTL in seconds of each cached prediction, at least 1 (to cache nothing: cache_prediction_enabled).",
            at_least(1, "a whole number of seconds ")),
    Setting("cache_key_prefix", Unicode, "CACHE_KEY_PREFIX", "modelforge",
            "Prefix of every cache key: {prefix}:prediction:{model_id}:{input_hash}."),
    Setting("cache_prediction_enabled", Bool, "CACHE_PREDICTION_ENABLED", True,
            "Cache predictions at all."),
    Setting("cache_dir", Unicode, "MODELFORGE_CACHE_DIR", lambda: str(data_dir() / "cache"),
            "Directory of the embedded local-disk prediction cache, used when redis_url is empty.",
            shown="<jupyter data dir>/modelforge/cache"),
    Setting("redis_timeout", Float, "MODELFORGE_REDIS_TIMEOUT", 0.25,
            "Socket timeout in seconds of each cache command. Past it the cache is bypassed for cache_retry_after "
            "seconds and the prediction is served from the engine.", deadline_seconds),
    Setting("cache_retry_after", Float, None, 5.0,
            "Seconds to bypass an unreachable cache, or an unreachable Celery broker (model changes then clean up "
            "inline), before trying it again.", seconds),
    Setting("database_timeout", Float, "MODELFORGE_DATABASE_TIMEOUT", 5.0,
            "Deadline in seconds of the PostgreSQL registry's connection (connect_timeout, whole seconds, at least 2) "
            "and of unacknowledged writes to it (tcp_user_timeout), with TCP keepalives probing an idle connection; a "
            "call whose connection sends and receives nothing for that long is cut (503).",
            deadline_seconds),
    Setting("broker_timeout", Float, "MODELFORGE_BROKER_TIMEOUT", 1.0,
            "Deadline in seconds of each call to the Celery broker, connect and every socket read and write: sending "
            "an invalidation task, the health probe.", deadline_seconds),
    Setting("celery_probe_ttl", Float, "MODELFORGE_CELERY_PROBE_TTL", 5.0,
            "Seconds health reuses the Celery probe's answer (is a worker answering?); the probe runs on a background "
            "thread, never on a request.", deadline_seconds),
    Setting("environment", Unicode, "ENVIRONMENT", "development",
            "Deployment name reported by health."),
    Setting("max_sessions", Int, "MODELFORGE_MAX_SESSIONS", 32,
            "How many ONNX Runtime sessions the engine keeps loaded per process, least recently used evicted first; at "
            "least 1.", at_least(1)),
    Setting("max_session_bytes", Int, "MODELFORGE_MAX_SESSION_BYTES", 512 * MiB,
            "Memory in bytes the loaded ONNX Runtime sessions may take together, each measured when it is built (its "
            "process RSS growth, at least the model's size plus the constants it computes); past it the least recently "
            "used are unloaded, as past max_sessions. 0: count only.", BYTES),
    Setting("max_constant_bytes", Int, "MODELFORGE_MAX_CONSTANT_BYTES", 64 * MiB,
            "Bytes of constants a model may compute when a session is built: what ONNX Runtime's constant folding "
            "makes of ConstantOfShape, Expand, Tile, Range... of constant inputs, and sparse constants made dense. "
            "Sized from the graph before any session exists; a model over it is refused with 400. 0: no check.", BYTES),
    Setting("max_arena_bytes", Int, "MODELFORGE_MAX_ARENA_BYTES", 1024 * MiB,
            "Cap in bytes of the CPU memory arena every ONNX Runtime session of the process shares (OrtArenaCfg "
            "max_mem): the working memory of all runs in flight, and the weights ONNX Runtime re-packs when it loads a "
            "model (MatMul, Gemm, Conv), so keep max_session_bytes well under it. A run that would need more fails "
            "with 413 before it allocates. Process-wide: the first engine of a process sets it. 0: no cap, each "
            "session its own arena.", BYTES),
    Setting("max_output_bytes", Int, "MODELFORGE_MAX_OUTPUT_BYTES", 8 * MiB,
            "Largest answer in bytes of output tensors (a float32 value is 4 bytes; its JSON takes up to ~10 times "
            "that in Python lists and text): a larger one is refused with 413 before any JSON is built, and never "
            "cached. 0: no limit.", BYTES),
    Setting("max_request_memory_bytes", Int, "MODELFORGE_MAX_REQUEST_MEMORY_BYTES", 1024 * MiB,
            "Bytes one request's run may raise the process's memory (RSS) above its steady state, what ONNX Runtime "
            "holds outside its arena included (strings copied in Loop/Scan bodies...): while runs are in flight the "
            "watchdog reads the RSS, and past it stops the run whose thread took the most pages, answering 413. "
            "0: not watched.", BYTES),
    Setting("intra_op_num_threads", Int, "MODELFORGE_INTRA_OP_NUM_THREADS", 0,
            "ONNX Runtime intra-op threads per session in a kernel or a script (the Python API, the magics, the "
            "demo): 0, ONNX Runtime's own default, one per physical core, so that a big batch uses them all as a "
            "plain InferenceSession would. The servers use server_intra_op_num_threads.",
            at_least(0, "", " (0: one per physical core)")),
    Setting("intra_op_spinning", Bool, "MODELFORGE_INTRA_OP_SPINNING", True,
            "Whether a kernel's or a script's intra-op threads spin while they wait for work, as ONNX Runtime's "
            "default does: a batch runs up to 1.4x faster (diabetes at batch 1000: 0.24 ms, not 0.34), and each run "
            "costs the process up to ~10 ms of CPU spinning on every core after it. Off: a kernel that predicts in a "
            "loop leaves the cores to a server on the same machine. A server's sessions never spin."),
    Setting("server_intra_op_num_threads", Int, "MODELFORGE_SERVER_INTRA_OP_NUM_THREADS", 1,
            "ONNX Runtime intra-op threads per session in a server (the Jupyter server extension, modelforge serve): "
            "1 runs each request on its executor thread, so concurrent requests share the cores and N loaded models "
            "never mean N thread pools; 0: one per physical core.",
            at_least(0, "", " (0: one per physical core)")),
    Setting("execution_providers", Unicode, "MODELFORGE_EXECUTION_PROVIDERS", "CPUExecutionProvider",
            "Comma-separated ONNX Runtime execution providers, in priority order; one this onnxruntime build does not "
            "have is refused.", providers_available),
    Setting("inference_timeout", Float, "MODELFORGE_INFERENCE_TIMEOUT", 30.0,
            "Longest time in seconds one model run may take; 0: no limit. Past it the run is stopped (ONNX Runtime's "
            "RunOptions.terminate, checked between nodes and loop iterations) and predict raises InferenceTimeoutError "
            "(HTTP 504); predict's timeout= overrides it per call.", seconds),
    Setting("dynamic_batching", Bool, "MODELFORGE_DYNAMIC_BATCHING", False,
            "Coalesce concurrent predictions of one model version into one session run, as Triton's dynamic batcher. "
            "Only one-input models whose input and tensor outputs all have a dynamic leading dimension are batched.",
            batching_limit),
    Setting("max_batch_size", Int, "MODELFORGE_MAX_BATCH_SIZE", 64,
            "Rows per batched run at most.", batching_limit),
    Setting("max_queue_delay_us", Int, "MODELFORGE_MAX_QUEUE_DELAY_US", 500,
            "How long the first request of a batch waits for others, in µs.", batching_limit),
    Setting("model_instances", Int, "MODELFORGE_MODEL_INSTANCES", 1,
            "With dynamic batching, how many batches of one model run at once, as Triton's instance_group count: while "
            "they are busy, arriving requests queue and form the next batch. Without batching, every request runs at "
            "once on its own thread.", batching_limit),
    Setting("model_batching", Dict, "MODELFORGE_MODEL_BATCHING", {},
            'Per-model overrides of dynamic_batching / max_batch_size / max_queue_delay_us / model_instances, by model '
            'name, as JSON: {"mlp": {"dynamic_batching": true, "max_queue_delay_us": 2000}}.', per_model_batching),
)
SETTING = {s.name: s for s in SETTINGS}
ENV_VARS = {s.name: s.env for s in SETTINGS if s.env}  # setting -> its environment variable


def check_url(name: str, url: str) -> None:
    """Refuse (``ValueError`` naming its variable, the URL masked) a value of URL setting ``name`` its library
    cannot parse (``checks.parsed_by``); empty: not set, nothing to parse."""
    setting = SETTING[name]
    setting.check(setting, url)  # type: ignore[misc]


def from_environment(name: str) -> Any:
    """Setting ``name`` as this process's environment gives it, without building (and checking) all the others:
    what the Celery worker's app, built when ``celery -A modelforge_jupyter.tasks`` imports it, needs."""
    return SETTING[name].read()


def markdown_table() -> str:
    """The README's table of settings: setting, environment variable, default and meaning, one row per setting."""
    lines = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        value, _, note = s.shown_default.partition(" (")  # "536870912 (512 MiB)": the value in code, the note not
        shown = "empty" if value == "empty" else f"`{value}`" + (f" ({note}" if note else "")
        env = f"`{s.env}`" if s.env else "none"
        lines.append(f"| `{s.name}` | {env} | {shown} | {s.help.replace('|', '&#124;')} |")
    return "\n".join(lines) + "\n"


class Settings(Configurable):
    """Every ModelForge setting (``SETTINGS``): a trait each, whose default is read from its environment variable.

    Every setting is read and checked here, once: raises ``ValueError`` naming the setting or its variable when a
    variable cannot be read as its type or a value fails its row's check (a URL its library cannot parse, a
    negative TTL or timeout, a batching setting out of range, ``max_sessions`` < 1, an execution provider this
    onnxruntime lacks...).
    """

    # One trait and one environment default per row. At class scope locals() is the namespace the class is built
    # from (Python's documented behaviour), so these are ordinary traits of Settings, as if written out here.
    locals().update({s.name: s.trait() for s in SETTINGS})
    locals().update({f"_default_{s.name}": default(s.name)(lambda _self, s=s: s.read()) for s in SETTINGS})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for setting in SETTINGS:  # every environment default is parsed now, not on first use
            try:
                value = getattr(self, setting.name)
            except TraitError as err:  # a default of the wrong kind: the same ValueError as any other bad setting
                raise ValueError(str(err)) from None
            if setting.check is not None:
                setting.check(setting, value)

    def environ(self) -> dict[str, str]:
        """``{variable: value}`` that gives another process these settings (a server's kernels, a worker): every
        setting that has a variable, written as it is read back."""
        return {s.env: env_text(getattr(self, s.name)) for s in SETTINGS if s.env}

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
        return split_providers(self.execution_providers)


class SettingsTraits(Configurable):
    """Every setting of ``SETTINGS`` as a trait left unset (None): a door's configuration, inherited by the server's
    ``ModelForgeApp`` (``--ModelForgeApp.redis_url=...``) and the kernel's ``ModelForgeMagics``
    (``%config ModelForgeMagics.redis_url = ...``). An unset trait keeps the environment's value, else the default."""

    locals().update({s.name: s.unset_trait() for s in SETTINGS})  # as in Settings: ordinary traits of this class

    def configured_settings(self) -> dict[str, Any]:
        """``{setting: value}`` of the traits that were set: the keyword arguments of ``Settings`` / ``ModelForge``."""
        return {s.name: value for s in SETTINGS if (value := getattr(self, s.name)) is not None}
