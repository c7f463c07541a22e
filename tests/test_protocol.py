"""The wire format (``protocol``): one parser and encoder of predict requests for every door."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from modelforge_jupyter.core.errors import InvalidInputError
from modelforge_jupyter.kernel.magics import parse_request
from modelforge_jupyter.core.protocol import (
    PredictRequest,
    decode_result,
    encode_predict,
    encode_result,
    parse_predict,
    predict_json,
)
from modelforge_jupyter.core.records import PredictionResult

from .mf_plugin import mf_identity_model


def test_bytes_and_decoded_bodies_parse_alike():
    body = {"model_id": "iris", "input_data": [[1, 2, 3, 4]], "use_cache": False, "version": 2}
    assert parse_predict(orjson.dumps(body)) == parse_predict(body) == PredictRequest("iris", [[1, 2, 3, 4]], False, 2)
    assert parse_predict({"model_id": "iris", "input_data": 1}) == PredictRequest("iris", 1, True, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty request body: send a JSON object"),
        (b"[1]", "the body must be a JSON object, got a JSON array"),
        (b"null", "the body must be a JSON object, got a JSON null"),
        (b"true", "the body must be a JSON object, got a JSON boolean"),
        (b"1.5", "the body must be a JSON object, got a JSON number"),
        (b"7", "the body must be a JSON object, got a JSON number"),
        (b'"iris"', "the body must be a JSON object, got a JSON string"),
        ({"input_data": 1}, "missing 'model_id': the model's name or id, a string"),
        ({"model_id": "", "input_data": 1}, "'model_id' must be the model's name or id, a non-empty string; got an "
                                             "empty string"),
        ({"model_id": 123, "input_data": 1}, "'model_id' must be the model's name or id, a non-empty string; got a "
                                             "JSON number"),
        ({"model_id": None, "input_data": 1}, "'model_id' must be the model's name or id, a non-empty string; got a "
                                              "JSON null"),
        ({"model_id": "iris"}, "missing 'input_data': {input name: nested list}, or a bare nested list"),
        ({"model_id": "iris", "input_data": 1, "use_cache": "no"}, "use_cache must be true or false, got 'no'"),
        ({"model_id": "iris", "input_data": 1, "version": 0}, "version must be a whole number >= 1, got 0"),
        ({"model_id": "iris", "input_data": 1, "version": True}, "version must be a whole number >= 1, got True"),
        ({"model_id": "iris", "input_data": 1, "versoin": 1},
         "unknown field 'versoin' in the predict request; it takes model_id, input_data, use_cache, version"),
        ({"model_id": "iris", "input_data": 1, "cache": False, "v": 2},
         "unknown fields 'cache', 'v' in the predict request; it takes model_id, input_data, use_cache, version"),
    ],
)
def test_a_malformed_request_is_a_400_naming_the_field(body, message):
    with pytest.raises(InvalidInputError) as err:
        parse_predict(body)
    assert (err.value.status, str(err.value)) == (400, message)


def test_malformed_json_names_the_decoder_error():
    with pytest.raises(InvalidInputError, match=r"^malformed JSON body: "):
        parse_predict(b"{nope")


def test_a_cell_request_follows_the_same_field_rules():
    # Given a %%mf_predict cell in request form, its fields obey the wire format's rules, not a second set
    assert parse_request('{"input_data": [[1]], "use_cache": false, "version": 3}', True, None) == ([[1]], False, 3)
    with pytest.raises(InvalidInputError, match=r"^version must be a whole number >= 1, got '2'$"):
        parse_request('{"input_data": [[1]], "version": "2"}', True, None)
    with pytest.raises(InvalidInputError, match=r"^version must be a whole number >= 1, got 0$"):
        parse_request('{"input_data": [[1]], "version": 0}', True, None)


def test_encoded_request_and_result_round_trip():
    body = encode_predict("iris", {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}, use_cache=False)
    assert orjson.loads(body) == {"model_id": "iris", "input_data": {"x": [[0.0, 1.0, 2.0, 3.0]]}, "use_cache": False}
    assert parse_predict(encode_predict("iris", [[1]], version=4)).version == 4
    result = PredictionResult("p1", "id-1", 2, {"y": [1]}, 0.5, False, "iris")
    answer = orjson.loads(encode_result(result))
    assert decode_result(answer, "iris") == result
    assert decode_result(answer, "id-1").model_name == ""  # called by id: the answer does not name the model


def test_predict_json_answers_as_the_server_does(mf_forge):
    # Given a registered identity model, When its request goes through predict_json, Then the answer holds its input
    mf_forge.register("ident", mf_identity_model("float32", [None, 3]).SerializeToString())
    body = orjson.dumps({"model_id": "ident", "input_data": {"x": [[1.0, 2.0, 3.0]]}, "use_cache": False})
    answer = orjson.loads(predict_json(mf_forge, body))
    assert (answer["model_id"], answer["output_data"], answer["cached"]) == (
        mf_forge.get("ident").id, {"y": [[1.0, 2.0, 3.0]]}, False)
