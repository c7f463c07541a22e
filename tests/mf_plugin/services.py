"""The services a test runs on: their URLs, a fresh database and key prefix per test, the two backends.

Backends (one pytest run covers both, ``mf_backend``):
- ``embedded``: a SQLite registry and the local-disk cache in the test's tmp_path (``mf_embedded``);
- ``services``: a fresh PostgreSQL database (created from ``MF_TEST_POSTGRES_URL``, dropped after) and a fresh Redis
  key prefix on ``MF_TEST_REDIS_URL`` (its keys deleted after).
Without those services a ``services`` test is skipped locally and fails under CI (``CI`` set), as the brief requires.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

POSTGRES_URL = os.environ.get("MF_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MF_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BROKERS = {  # Celery brokers: RabbitMQ and Redis (another database than the cache's)
    "rabbitmq": os.environ.get("MF_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    "redis": os.environ.get("MF_TEST_REDIS_BROKER_URL", "redis://127.0.0.1:6379/1"),
}


def mf_skip_unless_ci(msg: str) -> None:
    """Skip locally, fail under CI (``CI`` set, as ``.ci/run`` does): a test that did not run must not pass CI."""
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def mf_service_missing(what: str, err: BaseException) -> None:
    """A service the test needs is down: ``mf_skip_unless_ci``, naming it and how to point the tests at one."""
    mf_skip_unless_ci(f"{what} is not reachable ({err}); start it or set MF_TEST_{what.upper()}_URL")


@contextmanager
def _postgres_admin():
    """An AUTOCOMMIT connection to ``POSTGRES_URL``'s server (CREATE / DROP DATABASE cannot run in a transaction)."""
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            yield conn
    finally:
        admin.dispose()


def mf_create_database(prefix: str = "mf_test") -> tuple[str, str]:
    """(name, URL) of a new, empty PostgreSQL database on ``POSTGRES_URL``'s server; ``mf_drop_database`` it after.
    Raises what SQLAlchemy raises when the server is down."""
    import sqlalchemy as sa

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _postgres_admin() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return name, sa.engine.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


def mf_drop_database(name: str) -> None:
    """Drop database ``name`` (made by ``mf_create_database``), closing the connections still open to it."""
    import sqlalchemy as sa

    with _postgres_admin() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def mf_delete_keys(client, prefix: str) -> None:
    """Delete every Redis key under ``prefix:`` (SCAN + UNLINK)."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        client.unlink(*keys)


def mf_delete_queue(app, queue: str) -> None:
    """Delete a test's Celery ``queue`` from ``app``'s broker with what was declared for it: the queue and its
    exchange (RabbitMQ), the list and kombu's binding keys (Redis), so that a run leaves nothing behind."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.queue_delete(queue)
        channel.exchange_delete(queue)
        if conn.transport.driver_type == "redis":
            # kombu's Redis transport deletes only the lists its own channel declared: the queue's lists (one per
            # priority, named after it) and its binding keys are deleted by name
            with channel.conn_or_acquire() as client:
                client.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}",
                              *client.scan_iter(match=f"{queue}*"))


@contextmanager
def mf_fresh_services(redis_url: str = REDIS_URL):
    """``ModelForge(**...)`` keyword arguments for PostgreSQL + Redis, no broker: a new database (dropped after) and a
    new key prefix (its keys deleted after), for a fixture wider than a test (``mf_services_settings`` is per test).
    A service that is down: ``mf_service_missing``."""
    import redis

    try:
        name, url = mf_create_database()
    except Exception as err:
        mf_service_missing("postgres", err)
    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()
    except redis.RedisError as err:
        client.close()
        mf_drop_database(name)
        mf_service_missing("redis", err)
    prefix = f"mftest-{uuid.uuid4().hex[:12]}"
    try:
        yield {"database_url": url, "redis_url": redis_url, "cache_key_prefix": prefix, "celery_broker_url": ""}
    finally:
        mf_delete_keys(client, prefix)
        client.close()
        mf_drop_database(name)


# The test ModelForges run one intra-op thread, as the servers and the raw reference (``mf_raw_session``) do: a tree
# ensemble sums its trees in another order with another thread count, so outputs compared bit for bit need the same
# count. The kernel's default (one per core) is tested on its own (test_engine's threads-per-use test).
REFERENCE_THREADS = {"intra_op_num_threads": 1}


def mf_embedded(data_dir: Path) -> dict[str, str]:
    """``ModelForge(**...)`` keyword arguments of the embedded backend under ``data_dir``: the SQLite registry
    ``registry.db`` and the disk cache ``cache/`` (the layout of ``MODELFORGE_DATA_DIR``), no Redis, no broker."""
    return {"database_url": f"sqlite:///{data_dir / 'registry.db'}", "redis_url": "",
            "cache_dir": str(data_dir / "cache"), "celery_broker_url": ""}


# -- the test's own view of the prediction cache (Redis keys, or the disk cache's entries) --------------------------
def mf_cached_keys(forge) -> list[str]:
    """The cache keys of ``forge``'s cached predictions, sorted, read from Redis or the disk cache directly (what
    ``forge`` filed and has not written yet first written: ``cache_writes``)."""
    forge.cache.flush()
    if forge.cache.backend == "redis":
        pattern = f"{forge.settings.cache_key_prefix}:prediction:*"
        return sorted(k.decode() for k in forge.cache.client.scan_iter(match=pattern))
    return sorted(forge.cache.cache.iterkeys())


def mf_cache_ttl(forge, key: str) -> float | None:
    """Seconds until ``key`` expires in ``forge``'s cache (Redis's TTL, or the disk cache's expire time)."""
    if forge.cache.backend == "redis":
        return forge.cache.client.ttl(key)
    return forge.cache.ttl(key)


def mf_cache_value(forge, key: str) -> bytes | None:
    """The bytes cached under ``key`` in ``forge``'s cache, read directly (no hit is counted)."""
    forge.cache.flush()
    if forge.cache.backend == "redis":
        return forge.cache.client.get(key)
    return forge.cache.cache.get(key)


# -- fixtures -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mf_redis_url() -> str:
    """The Redis the tests use (``MF_TEST_REDIS_URL``): the cache's; each test keeps to its own key prefix."""
    return REDIS_URL


@pytest.fixture
def mf_postgres_url():
    """URL of a new, empty PostgreSQL database; dropped after the test."""
    try:
        name, url = mf_create_database()
    except Exception as err:
        mf_service_missing("postgres", err)
    yield url
    mf_drop_database(name)


@pytest.fixture
def mf_redis(mf_redis_url):
    """(redis client, a fresh key prefix); every key under the prefix is deleted after the test."""
    import redis

    client = redis.Redis.from_url(mf_redis_url)
    try:
        client.ping()
    except redis.RedisError as err:
        mf_service_missing("redis", err)
    prefix = f"mftest-{uuid.uuid4().hex[:12]}"
    yield client, prefix
    mf_delete_keys(client, prefix)
    client.close()


@pytest.fixture
def mf_services_settings(mf_postgres_url, mf_redis, mf_redis_url) -> dict:
    """``ModelForge(**...)`` keyword arguments for PostgreSQL + Redis: this test's database and key prefix, no
    broker (the cleanup runs eagerly)."""
    return {"database_url": mf_postgres_url, "redis_url": mf_redis_url, "cache_key_prefix": mf_redis[1],
            "celery_broker_url": "", **REFERENCE_THREADS}


@pytest.fixture
def mf_embedded_settings(tmp_path) -> dict:
    """``ModelForge(**...)`` keyword arguments for the embedded backend in the test's tmp_path (``mf_embedded``)."""
    return {**mf_embedded(tmp_path), **REFERENCE_THREADS}


def mf_reachable_broker(name: str) -> str:
    """URL of the Celery broker ``name`` (a key of ``BROKERS``) once it answers; ``mf_service_missing`` if not."""
    from modelforge_jupyter.tasks import make_app

    url = BROKERS[name]
    app = make_app(url)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as err:
        mf_service_missing(name, err)
    finally:
        app.close()
    return url


@pytest.fixture(params=list(BROKERS))
def mf_broker(request) -> str:
    """URL of a reachable Celery broker: RabbitMQ, then Redis (the test runs once on each)."""
    return mf_reachable_broker(request.param)


@pytest.fixture(scope="module", params=list(BROKERS))
def mf_module_broker(request) -> str:
    """``mf_broker`` for a whole module (each module runs once per broker, ids ``[rabbitmq]`` / ``[redis]``)."""
    return mf_reachable_broker(request.param)


@pytest.fixture
def mf_silent_listener():
    """Port of a TCP listener on 127.0.0.1 that accepts every connection and never sends a byte: a broker, database
    or Redis that hangs. Its connections are closed after the test (a call still blocked on one then returns)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:  # closed at teardown
                return

    thread = threading.Thread(target=accept, name="mf-silent-listener", daemon=True)
    thread.start()
    yield server.getsockname()[1]
    try:
        server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not, on Linux)
    except OSError:
        pass
    server.close()
    thread.join(5)
    for conn in accepted:
        conn.close()


@pytest.fixture(params=["embedded", "services"])
def mf_backend(request) -> str:
    return request.param


@pytest.fixture
def mf_settings(mf_backend, request) -> dict:
    """Keyword arguments for ``ModelForge(**...)`` on the chosen backend, isolated to this test."""
    if mf_backend == "embedded":
        return request.getfixturevalue("mf_embedded_settings")
    return request.getfixturevalue("mf_services_settings")


@pytest.fixture
def mf_forge(mf_settings):
    """A ``ModelForge`` on the chosen backend, closed after the test."""
    from modelforge_jupyter import ModelForge

    forge = ModelForge(**mf_settings)
    yield forge
    forge.close()


# -- one backend for a whole module: for tests that share a process they start once (a server and its workers) ------
@pytest.fixture(scope="module", params=["embedded", "services"])
def mf_module_settings(request, tmp_path_factory, mf_redis_url) -> dict:
    """``mf_settings`` for every test of a module (each module runs once per backend, ids ``[embedded]`` /
    ``[services]``): a registry, cache and key prefix of its own, dropped after the module's last test. The tests
    share the registry: ``mf_clear_registry`` gives each test an empty one."""
    if request.param == "embedded":
        yield {**mf_embedded(tmp_path_factory.mktemp("module-backend")), **REFERENCE_THREADS}
        return
    with mf_fresh_services(mf_redis_url) as settings:
        yield {**settings, **REFERENCE_THREADS}


@pytest.fixture(scope="module")
def mf_module_forge(mf_module_settings):
    """A ``ModelForge`` on ``mf_module_settings``, closed after the module's last test."""
    from modelforge_jupyter import ModelForge

    forge = ModelForge(**mf_module_settings)
    yield forge
    forge.close()


def mf_clear_registry(forge) -> None:
    """Delete every model of ``forge``'s registry (their cached predictions and sessions go with them): a test on a
    module's shared backend starts from an empty registry, as one on its own would."""
    for record in forge.models():
        forge.delete(record.name)


def mf_celery_services(broker: str, queue_prefix: str):
    """For a module that starts Celery workers: (a Celery app on ``BROKERS[broker]``, a Redis client, (database name,
    its URL: a fresh PostgreSQL database), a fresh key prefix, a fresh queue name ``<queue_prefix>-...``), each
    service checked first (a missing one: ``mf_service_missing``). The caller closes the app and the client, drops
    the database and deletes the prefix's keys."""
    import redis

    from modelforge_jupyter.tasks import make_app

    app = make_app(BROKERS[broker])
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        client = redis.Redis.from_url(REDIS_URL)
        client.ping()
        database = mf_create_database()
    except Exception as err:
        app.close()
        mf_service_missing(f"{broker}, redis or postgres", err)
    return app, client, database, f"mftest-{uuid.uuid4().hex[:12]}", f"{queue_prefix}-{uuid.uuid4().hex[:8]}"

