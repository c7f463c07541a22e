"""A PostgreSQL server that stops answering after the connection is made: libpq has no read timeout, so a registry
call waited forever. Reproduced for real: the backends serving a ``jupyter server``'s connections are stopped with
SIGSTOP (their host still acknowledges TCP), and continued in a ``finally``."""

from __future__ import annotations

import os
import signal
import threading
import time

import orjson
import sqlalchemy as sa

from .mf_plugin import SAMPLES, mf_http, mf_isolated_env, mf_start_server

TIMEOUT = 2.0


def backends(database_url: str) -> list[int]:
    """PIDs of the PostgreSQL backends connected to ``database_url``'s database, other than the one asking."""
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).scalars())
    finally:
        engine.dispose()


def test_a_silent_database_fails_a_call_within_database_timeout_and_the_rest_is_served(
    tmp_path, mf_postgres_url, mf_redis, mf_redis_url
):
    # Given a server on PostgreSQL + Redis with database_timeout = 2 s, two models, one of them warm
    _client, prefix = mf_redis
    env = mf_isolated_env(tmp_path, DATABASE_URL=mf_postgres_url, REDIS_URL=mf_redis_url, CACHE_KEY_PREFIX=prefix,
                          MODELFORGE_DATABASE_TIMEOUT=str(TIMEOUT))
    server = mf_start_server(tmp_path / "server", env)
    stopped: list[int] = []

    def predict(model: str) -> tuple[int, dict, float]:
        start = time.monotonic()
        body = orjson.dumps({"model_id": model, "input_data": [[5.1, 3.5, 1.4, 0.2]], "use_cache": False})
        status, answer = mf_http("POST", server.url + "modelforge/predict", body, server.token)
        return status, orjson.loads(answer), time.monotonic() - start

    try:
        for name in ("warm", "cold"):
            assert mf_http("PUT", server.url + f"modelforge/models/{name}", (SAMPLES / "iris.onnx").read_bytes(),
                        server.token)[0] == 201
        assert predict("warm")[0] == 200

        # When every backend serving the server stops answering
        for pid in backends(mf_postgres_url):
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        assert stopped
        outcome: list = []
        cold = threading.Thread(target=lambda: outcome.append(predict("cold")), daemon=True)
        cold.start()  # needs the database: the registry's generation, then the model's record
        time.sleep(0.3)
        warm_status, _, warm_seconds = predict("warm")  # needs only Redis (the generation stamp) and the engine
        live_status = mf_http("GET", server.url + "modelforge/health/live")[0]
        cold.join(TIMEOUT + 8)

        # Then the call needing the database failed within about database_timeout, 503 naming the setting, and the
        # rest was served meanwhile
        assert outcome, "the call needing the database was still waiting"
        status, body, seconds = outcome[0]
        assert status == 503 and TIMEOUT - 0.2 < seconds < TIMEOUT + 3, (status, body, seconds)
        message = body["message"]
        assert "database_timeout" in message and "MODELFORGE_DATABASE_TIMEOUT" in message
        assert "/" not in message and "postgres" not in message and "mf_test_" not in message
        assert warm_status == 200 and warm_seconds < 1.0 and live_status == 200
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    try:
        # and once the database answers again, so does the server
        status, body, _ = predict("cold")
        assert status == 200 and body["output_data"]["output_label"] == [0]
    finally:
        server.stop()
