"""``core/loop_hits.py`` on real PostgreSQL + Redis: a proven hit is answered without the executor, a proven miss
(or a request that does not use the cache) is handed to the executor with its lookup done, and everything it cannot
prove (not remembered, a stale stamp, a large body, Redis unreachable) is passed back (None), never raised and never
answered stale."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson

from modelforge_jupyter import ModelForge
from modelforge_jupyter.core.loop_hits import LOOP_BODY_BYTES, LoopHits
from modelforge_jupyter.core.protocol import predict_json
from modelforge_jupyter.core.records import ProvenMiss

from .mf_plugin import SAMPLES, mf_free_port

X = [[6.1, 2.8, 4.7, 1.2]]


def body(**fields) -> bytes:
    return orjson.dumps({"model_id": "iris", "input_data": X, **fields})


def test_hits_are_answered_and_the_rest_passed_back(mf_services_settings):
    with ModelForge(**mf_services_settings) as forge:
        forge.register("iris", SAMPLES / "iris.onnx")
        hits = LoopHits(forge)
        assert LoopHits.usable(forge)

        async def scenario():
            # not yet remembered in this process's resolver: passed back whole
            first = await hits.answer_json(body())
            predict_json(forge, body())  # the executor's path: resolves, runs, caches
            cached = await hits.answer_json(body())
            # a remembered model, an input never predicted: a proven miss, handed to the executor to run
            other = await hits.answer_json(body(input_data=[[5.9, 3.0, 5.1, 1.8]]))
            no_cache = await hits.answer_json(body(use_cache=False))
            large = await hits.answer_json(body(input_data=[X[0]] * (LOOP_BODY_BYTES // 10)))
            refused = await hits.answer_json(body(input_data=[[1, 2]]))
            await hits.close()
            return first, cached, other, no_cache, large, refused

        first, cached, other, no_cache, large, refused = asyncio.run(scenario())
        assert first is None and large is None and refused is None
        want = orjson.loads(predict_json(forge, body()))
        got = orjson.loads(cached)
        assert got["cached"] and got["output_data"] == want["output_data"]
        assert isinstance(other, ProvenMiss) and other.record.name == "iris"
        # use_cache false: the record proven by the stamp alone, no key (the cache is neither read nor written)
        assert isinstance(no_cache, ProvenMiss) and no_cache.key is None
        assert not orjson.loads(predict_json(forge, no_cache))["cached"]
        assert hits.answered == 1 and hits.missed == 2 and hits.passed == 3
        # The executor runs the proven miss: the raw model's answer, written to the cache at the loop's key
        ran = orjson.loads(predict_json(forge, other))
        direct = forge.predict("iris", [[5.9, 3.0, 5.1, 1.8]], use_cache=False)
        assert not ran["cached"] and ran["output_data"] == orjson.loads(orjson.dumps(direct.output_data))
        assert forge.cache.client.get(other.key) is not None
        assert orjson.loads(predict_json(forge, body(input_data=[[5.9, 3.0, 5.1, 1.8]])))["cached"]


def test_redis_unreachable_is_passed_back_not_raised(mf_services_settings):
    with ModelForge(**mf_services_settings) as forge:
        forge.register("iris", SAMPLES / "iris.onnx")
        predict_json(forge, body())
        predict_json(forge, body())
        hits = LoopHits(forge)

        async def scenario():
            import redis.asyncio

            hits._client = redis.asyncio.Redis(port=mf_free_port(), socket_timeout=0.2, socket_connect_timeout=0.2)
            hits._loop = asyncio.get_running_loop()
            return await hits.answer_json(body())

        assert asyncio.run(scenario()) is None and hits.answered == 0
        assert np.array(forge.predict("iris", X).outputs["output_label"]).tolist() == [1]


def test_with_the_cache_off_a_proven_record_runs_uncached_and_a_stale_one_is_passed_back(mf_services_settings):
    settings = {**mf_services_settings, "cache_prediction_enabled": False}
    with ModelForge(**settings) as forge, ModelForge(**settings) as other:
        forge.register("iris", SAMPLES / "iris.onnx")
        predict_json(forge, body())  # remembered by this process's resolver
        hits = LoopHits(forge)
        assert LoopHits.usable(forge)  # the stamp alone proves records: usable with the cache off

        async def scenario():
            miss = await hits.answer_json(body())
            # another process registers version 2 (blocking here: the test's loop serves nothing else)
            other.update("iris", SAMPLES / "iris_v2.onnx")
            stale = await hits.answer_json(body())
            await hits.close()
            return miss, stale

        miss, stale = asyncio.run(scenario())
        # Given the cache off: a ProvenMiss without a key, run by the executor; nothing is written to Redis
        assert isinstance(miss, ProvenMiss) and miss.key is None and miss.record.version == 1
        ran = orjson.loads(predict_json(forge, miss))
        raw = forge.predict("iris", X, use_cache=False, version=1)
        assert not ran["cached"] and ran["model_version"] == 1
        assert ran["output_data"] == orjson.loads(orjson.dumps(raw.output_data))
        assert list(forge.cache.client.scan_iter(match=f"{settings['cache_key_prefix']}:prediction:*")) == []
        # When another process registered version 2: the remembered version 1 is no longer proven, so the loop
        # passed the request back (the executor resolves version 2), never running the old version as the latest
        assert stale is None and hits.passed == 1
        assert orjson.loads(predict_json(forge, body()))["model_version"] == 2
