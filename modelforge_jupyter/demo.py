"""The main job on embedded defaults: register the sample models, predict, show the cache hit, update a model.

Run: ``modelforge-demo`` (or ``python -m modelforge_jupyter.demo``). Uses whatever the environment configures
(``DATABASE_URL``, ``REDIS_URL``...); with nothing set, a SQLite registry and a disk cache under the Jupyter data dir.
Each prediction is printed beside raw onnxruntime's answer on the same input.
"""

from __future__ import annotations

import argparse
import numpy as np

from .samples import sample_path

SAMPLE_MODELS = {
    "iris": ("iris.onnx", [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]),
    "breast_cancer_rf": ("breast_cancer_rf.onnx", None),
    "diabetes": ("diabetes.onnx", None),
}


def sample_input(record, rows: int = 2, seed: int = 0) -> np.ndarray:
    """A float32 batch shaped like the record's single input (unknown dims as ``rows``)."""
    spec = record.inputs[0]
    shape = [rows if d is None else d for d in spec.shape]
    return np.random.default_rng(seed).uniform(0, 5, shape).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    import onnxruntime as ort

    from . import ModelForge

    with ModelForge() as mf:
        print(f"registry: {mf.settings.database_url}")
        print(f"cache:    {mf.settings.redis_url or mf.settings.cache_dir} ({mf.cache.backend})")
        for name, (filename, example) in SAMPLE_MODELS.items():
            record, changed = mf.save(name, sample_path(filename))
            X = np.asarray(example, np.float32) if example else sample_input(record)
            miss = mf.predict(name, X, use_cache=False)
            mf.predict(name, X)
            hit = mf.predict(name, X)
            raw = ort.InferenceSession(str(sample_path(filename)), mf.engine.session_options()).run(
                None, {record.inputs[0].name: X}
            )
            print(f"\n{name} v{record.version} ({'registered' if changed else 'unchanged'}, id {record.id})")
            first = record.outputs[0].name
            print(f"  {first}: {miss.output_data[first]}  raw onnxruntime: {raw[0].tolist()}")
            print(f"  computed in {miss.inference_time_ms:.3f} ms; cache hit (cached={hit.cached}) "
                  f"in {hit.inference_time_ms:.3f} ms")
        updated = mf.update("iris", sample_path("iris_v2.onnx"))
        X = np.asarray(SAMPLE_MODELS["iris"][1], np.float32)
        res = mf.predict("iris", X)
        print(f"\niris updated to v{updated.version}: probabilities {res.output_data['output_probability'][0]}")
        print(f"health: {mf.health()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
