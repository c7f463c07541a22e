"""The Redis registry stamp (PostgreSQL + Redis): one pipelined round trip proves metadata current, never wrongly."""

from __future__ import annotations

import pytest

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.freshness import RedisStamp

from .mf_plugin import SAMPLES


@pytest.fixture
def services(mf_services_settings, mf_redis):
    """(PostgreSQL + Redis settings, the Redis client)."""
    return mf_services_settings, mf_redis[0]


def count_calls(obj, name: str) -> list:
    """Wrap ``obj.name`` so each call is recorded; the real method still runs."""
    calls, real = [], getattr(obj, name)
    setattr(obj, name, lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def test_interleaved_writers_publish_the_highest_generation_once_both_are_done(services):
    settings, client = services
    with ModelForge(**settings) as forge:
        stamp = forge.resolver.stamp
        assert isinstance(stamp, RedisStamp)
        stamp.before_write()  # writer 1
        stamp.before_write()  # writer 2
        assert client.get(stamp.stamp_key) is None

        stamp.after_write(6)  # writer 2 (committed second) finishes first
        assert client.get(stamp.stamp_key) is None  # writer 1 still in flight
        stamp.after_write(5)

        assert client.get(stamp.stamp_key) == b"6"
        assert client.get(stamp.writers_key) is None


def test_known_model_predicts_without_asking_the_database(services):
    settings, _client = services
    with ModelForge(**settings) as forge:
        forge.register("iris", SAMPLES / "iris.onnx")
        forge.predict("iris", [[1, 2, 3, 4]])  # resolves once
        asked = count_calls(forge.registry, "generation")

        results = [forge.predict("iris", [[1, 2, 3, 4]]) for _ in range(5)]
        results += [forge.predict("iris", [[1, 2, 3, 4]], use_cache=False) for _ in range(5)]

        assert asked == []
        assert [r.cached for r in results] == [True] * 5 + [False] * 5


def test_update_elsewhere_is_seen_and_a_dead_writer_only_costs_database_checks(services):
    settings, client = services
    with ModelForge(**settings) as reader, ModelForge(**settings) as writer:
        writer.register("iris", SAMPLES / "iris.onnx")
        assert reader.predict("iris", [[1, 2, 3, 4]]).model_version == 1

        writer.update("iris", SAMPLES / "iris_v2.onnx")
        assert reader.predict("iris", [[1, 2, 3, 4]]).model_version == 2

        writer.resolver.stamp.before_write()  # a writer that dies before its commit: the stamp stays absent
        asked = count_calls(reader.registry, "generation")
        assert [reader.predict("iris", [[1, 2, 3, 4]]).model_version for _ in range(3)] == [2, 2, 2]
        assert len(asked) == 3
        assert 0 < client.ttl(writer.resolver.stamp.writers_key) <= 60
