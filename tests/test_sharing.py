"""Processes sharing one registry and one cache: a result computed in one is a cache hit in another, and a model
update made in one is seen by the next prediction in every other (no restart, no waiting)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import sqlalchemy as sa

from .mf_plugin import SAMPLES

HEAD = "0002"  # the newest migration (core/migrations/versions)

CHILD = textwrap.dedent(
    """
    import json, sys
    from modelforge_jupyter import ModelForge
    settings, action = json.loads(sys.argv[1]), sys.argv[2]
    with ModelForge(**settings) as mf:
        if action == "predict":
            r = mf.predict("iris", [[5.1, 3.5, 1.4, 0.2]])
            print(json.dumps({"cached": r.cached, "version": r.model_version, "out": r.output_data}))
        elif action == "update":
            print(json.dumps({"version": mf.update("iris", sys.argv[3]).version}))
    """
)


def run_child(settings: dict, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(settings), *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_result_computed_here_is_a_cache_hit_in_another_process(mf_forge, mf_settings):
    mf_forge.register("iris", SAMPLES / "iris.onnx")
    here = mf_forge.predict("iris", [[5.1, 3.5, 1.4, 0.2]])

    there = run_child(mf_settings, "predict")

    assert (here.cached, there["cached"]) == (False, True)
    assert there["out"] == here.output_data


def test_update_in_another_process_is_seen_by_the_next_predict_here(mf_forge, mf_settings):
    mf_forge.register("iris", SAMPLES / "iris.onnx")
    before = mf_forge.predict("iris", [[5.1, 3.5, 1.4, 0.2]])

    assert run_child(mf_settings, "update", str(SAMPLES / "iris_v2.onnx")) == {"version": 2}
    after = mf_forge.predict("iris", [[5.1, 3.5, 1.4, 0.2]])

    assert (before.model_version, after.model_version, after.cached) == (1, 2, False)
    assert after.output_data != before.output_data


def test_processes_starting_together_on_a_fresh_database_migrate_once(mf_settings):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "import json,sys; from modelforge_jupyter import ModelForge; "
             "ModelForge(**json.loads(sys.argv[1])).close()", json.dumps(mf_settings)],
            stderr=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]

    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    engine = sa.create_engine(mf_settings["database_url"])
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
        assert conn.execute(sa.text("SELECT generation FROM mf_registry_state")).scalars().all() == [0]
    engine.dispose()
