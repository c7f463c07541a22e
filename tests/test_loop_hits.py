"""``core/loop_hits.py`` on real PostgreSQL + Redis: a proven hit is answered without the executor, and everything
it cannot prove (not remembered, a miss, ``use_cache`` false, a large body, Redis unreachable) is passed back
(None), never raised and never answered stale."""

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
        assert first is None and no_cache is None and large is None and refused is None
        want = orjson.loads(predict_json(forge, body()))
        got = orjson.loads(cached)
        assert got["cached"] and got["output_data"] == want["output_data"]
        assert isinstance(other, ProvenMiss) and other.record.name == "iris"
        assert hits.answered == 1 and hits.missed == 1 and hits.passed == 4
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
