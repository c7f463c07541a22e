"""Fixtures for every test: the two backends, real sample models, and raw onnxruntime to compare against.

Backends (one pytest run covers both):
- ``embedded``: a SQLite registry and the local-disk cache in the test's tmp_path;
- ``services``: a fresh PostgreSQL database (created from ``MF_TEST_POSTGRES_URL``, dropped after) and a fresh Redis
  key prefix on ``MF_TEST_REDIS_URL`` (its keys deleted after).
Without those services a ``services`` test is skipped locally and fails under CI (``CI`` set), as the brief requires.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

SAMPLES = Path(__file__).resolve().parent.parent / "modelforge_jupyter" / "sample_models"
POSTGRES_URL = os.environ.get("MF_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MF_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def mf_skip_unless_ci(msg: str) -> None:
    """Skip locally, fail under CI (``CI`` set, as ``.ci/run`` does): a test that did not run must not pass CI."""
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def mf_service_missing(what: str, err: BaseException) -> None:
    """A service the test needs is down: ``mf_skip_unless_ci``, naming it and how to point the tests at one."""
    mf_skip_unless_ci(f"{what} is not reachable ({err}); start it or set MF_TEST_{what.upper()}_URL")


@pytest.fixture
def mf_postgres_url():
    """URL of a new, empty PostgreSQL database; dropped after the test."""
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"mf_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as err:
        admin.dispose()
        mf_service_missing("postgres", err)
    url = sa.engine.make_url(POSTGRES_URL).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def mf_redis():
    """(redis client, a fresh key prefix); every key under the prefix is deleted after the test."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as err:
        mf_service_missing("redis", err)
    prefix = f"mftest-{uuid.uuid4().hex[:12]}"
    yield client, prefix
    keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        client.unlink(*keys)
    client.close()


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
def mf_settings(mf_backend, tmp_path, request) -> dict:
    """Keyword arguments for ``ModelForge(**...)`` on the chosen backend, isolated to this test."""
    if mf_backend == "embedded":
        return {
            "database_url": f"sqlite:///{tmp_path / 'registry.db'}",
            "redis_url": "",
            "cache_dir": str(tmp_path / "cache"),
            "celery_broker_url": "",
        }
    client, prefix = request.getfixturevalue("mf_redis")
    return {
        "database_url": request.getfixturevalue("mf_postgres_url"),
        "redis_url": REDIS_URL,
        "cache_key_prefix": prefix,
        "celery_broker_url": "",
    }


@pytest.fixture
def mf_forge(mf_settings):
    """A ``ModelForge`` on the chosen backend, closed after the test."""
    from modelforge_jupyter import ModelForge

    forge = ModelForge(**mf_settings)
    yield forge
    forge.close()


@pytest.fixture(scope="session")
def mf_silero_path() -> Path:
    """silero-vad's pretrained ONNX network, shipped in its PyPI wheel (installed with --no-deps)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        pytest.fail("silero-vad is not installed: pip install --no-deps silero-vad (the README's setup does)")
    return Path(spec.origin).parent / "data" / "silero_vad.onnx"


def mf_raw_run(path: Path | bytes, feed: dict[str, np.ndarray]) -> list:
    """Raw onnxruntime on the same model and input, with the product's SessionOptions (tree ensembles sum in another
    order with another thread count): the reference every prediction is compared with."""
    from modelforge_jupyter.core.engine import Engine

    src = str(path) if isinstance(path, Path) else path
    session = ort.InferenceSession(src, sess_options=Engine().session_options(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def mf_identity_model(dtype: str, shape: list, name: str = "x"):
    """A one-node ONNX model (Identity) with input ``name`` of ``dtype``/``shape`` and output ``y``."""
    from onnx import TensorProto, helper

    elem = {
        "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
        "int64": TensorProto.INT64, "int32": TensorProto.INT32, "int8": TensorProto.INT8,
        "uint8": TensorProto.UINT8, "bool": TensorProto.BOOL, "string": TensorProto.STRING,
    }[dtype]
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], ["y"])],
        f"identity_{dtype}",
        [helper.make_tensor_value_info(name, elem, shape)],
        [helper.make_tensor_value_info("y", elem, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
