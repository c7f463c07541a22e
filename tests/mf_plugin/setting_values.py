"""Values for every setting of the table (``core.settings.SETTINGS``): ones the settings refuse, read from the
environment, and valid ones other than the default. A setting added to the table is covered by its type, or the
tests say which values to give it."""

from __future__ import annotations

from traitlets import Bool, Dict, Float, Int, Unicode

from modelforge_jupyter.core.settings import ENV_VARS, Settings

# A value each kind of setting cannot take, read from the environment
BAD_BY_TYPE = {Int: ["abc", "1.5", "1e3", "1GB"], Float: ["fast", "nan", "-1", "inf"], Bool: ["maybe", "2"],
               Dict: ["{not json", "[1]"]}
# Text settings: the values they refuse, or why any text is a valid value
BAD_TEXT = {
    "database_url": ["postgresql+psycopg://u:pa@ss:PSECRET4@127.0.0.1:99999/db", "u:PSECRET@@127.0.0.1/mf",
                     "postgresql+psycopg://u:PSECRET3]@[::1/db"],
    "redis_url": ["redis://u:pa@RSECRET6@127.0.0.1:abc/0", "rediss2://u:RSECRET7@127.0.0.1:6379/0"],
    "celery_broker_url": ["amqp://guest:pa@BSECRET8@127.0.0.1:xx//"],
    "execution_providers": ["cpuexecutionprovider", "CUDAExecutionProvider", ","],
}
ANY_TEXT = {"celery_queue", "cache_key_prefix", "cache_dir", "environment"}  # names and paths: any text is valid


def mf_bad_setting_values() -> list[tuple[str, str, str]]:
    """(setting, env var, bad value) for every setting that has an environment variable."""
    cases = []
    for name, var in sorted(ENV_VARS.items()):
        trait = Settings.class_traits()[name]
        if isinstance(trait, Unicode):
            values = BAD_TEXT.get(name, [])
        else:
            values = next(v for kind, v in BAD_BY_TYPE.items() if isinstance(trait, kind))
        cases += [(name, var, value) for value in values]
    return cases


def mf_other_setting_value(name: str, tmp_path, redis_url: str = "redis://127.0.0.1:6379/0"):
    """A valid value of setting ``name`` other than its default (a text setting that is checked needs one here)."""
    from modelforge_jupyter.core.settings import SETTING

    setting = SETTING[name]
    special = {"database_url": f"sqlite:///{tmp_path / 'other.db'}", "redis_url": redis_url,
               "celery_broker_url": "memory://", "execution_providers": "CPUExecutionProvider,",
               "model_batching": {"m": {"max_batch_size": 2, "dynamic_batching": True}}}
    if name in special:
        return special[name]
    value = setting.default_value()
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    assert setting.kind is Unicode and setting.check is None, f"{name}: give mf_other_setting_value a valid value"
    return f"{value}-other"
