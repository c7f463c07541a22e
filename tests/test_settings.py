"""Settings: every environment variable is read and checked when ``Settings`` is built; URLs never show a secret."""

from __future__ import annotations

import json

import pytest
from traitlets import Unicode

from modelforge_jupyter.server_extension.app import ENV_VARS
from modelforge_jupyter.core.settings import Settings, check_url, mask_setting_url, mask_url

from .mf_plugin import ANY_TEXT, BAD_TEXT, mf_bad_setting_values, mf_other_setting_value

# Numbers read fine but out of range
OUT_OF_RANGE = {"CACHE_TTL": "-1", "CACHE_PREDICTION_TTL": "0", "MODELFORGE_REDIS_TIMEOUT": "0",
                "MODELFORGE_INTRA_OP_NUM_THREADS": "-2", "MODELFORGE_MAX_SESSIONS": "0",
                "MODELFORGE_MAX_OUTPUT_BYTES": "-5", "MODELFORGE_MAX_BATCH_SIZE": "0",
                "MODELFORGE_INFERENCE_TIMEOUT": "-1", "MODELFORGE_MODEL_BATCHING": '{"m": {"x": 1}}'}


def test_every_environment_setting_has_bad_values_to_test():
    # A setting added later is covered: by its type, or it must be listed as text that can be bad, or any text
    text = {n for n in ENV_VARS if isinstance(Settings.class_traits()[n], Unicode)}
    assert text == set(BAD_TEXT) | ANY_TEXT
    assert {name for name, _, _ in mf_bad_setting_values()} == set(ENV_VARS) - ANY_TEXT


@pytest.mark.parametrize(("name", "var", "value"), mf_bad_setting_values())
def test_a_bad_environment_value_is_refused_when_settings_are_built_naming_it(monkeypatch, name, var, value):
    monkeypatch.setenv(var, value)

    with pytest.raises(ValueError) as raised:
        Settings()

    message = str(raised.value)
    assert var in message or message.startswith(f"{name}"), message
    for secret in ("SECRET", "pa@ss", "PSECRET"):
        assert secret not in message, message


@pytest.mark.parametrize(("var", "value"), OUT_OF_RANGE.items())
def test_a_number_out_of_range_in_the_environment_is_refused(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    name = next(n for n, v in ENV_VARS.items() if v == var)

    with pytest.raises(ValueError, match=rf"^(model_batching\[|{name}\b|{var}\b)"):
        Settings()


@pytest.mark.parametrize(
    ("name", "url", "message"),
    [
        ("database_url", "postgresql+psycopg://u:pa@ss:PSECRET4@127.0.0.1:99999/db",
         "DATABASE_URL 'postgresql+psycopg://***@127.0.0.1:99999/db' cannot be parsed: invalid literal for int() "
         "with base 10: '***'"),
        ("database_url", "postgresql+psycopg://u:PSECRET3]@[::1/db",
         "DATABASE_URL 'postgresql+psycopg://***@[::1/db' cannot be parsed: "),
        ("database_url", "modelforge:s3cret-pw@@127.0.0.1/mf",
         "DATABASE_URL '***@127.0.0.1/mf' cannot be parsed: Could not parse SQLAlchemy URL from given URL string"),
        ("redis_url", "redis://u:pa@RSECRET6@127.0.0.1:abc/0",
         "REDIS_URL 'redis://***@127.0.0.1:abc/0' cannot be parsed: Port could not be cast to integer value as 'abc'"),
        ("redis_url", "redis://:abc@127.0.0.1:abc/0?password=abc",
         "REDIS_URL 'redis://***@127.0.0.1:abc/0?password=***' cannot be parsed: Port could not be cast to integer "
         "value as '***'"),
        ("celery_broker_url", "amqp://guest:pa@BSECRET8@127.0.0.1:xx//",
         "CELERY_BROKER_URL 'amqp://***@127.0.0.1:xx//' cannot be parsed: Port could not be cast to integer value as "
         "'xx'"),
    ],
)
def test_an_unparseable_url_is_named_and_none_of_its_user_info_is_shown(name, url, message):
    with pytest.raises(ValueError) as raised:
        check_url(name, url)

    assert str(raised.value).startswith(message)
    assert not any(piece in str(raised.value) for piece in ("SECRET", "pa@ss", "s3cret"))


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql+psycopg2://u@127.0.0.1/db?password=QSECRET1", "postgresql+psycopg2://u@127.0.0.1/db?password=***"),
        ("DATABASE_URL 'postgresql://u@h/db?sslmode=require&password=Q1' is not",
         "DATABASE_URL 'postgresql://u@h/db?sslmode=require&password=***' is not"),
        ("redis://127.0.0.1:1/0?password=QSECRET1 down", "redis://127.0.0.1:1/0?password=*** down"),
        ("amqp://h//?api_key=K&x=1#f;auth_token=T", "amqp://h//?api_key=***&x=1#f;auth_token=***"),
        ("redis://:RSECRET6@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
        ("postgresql://pa@ss:SECRET@db/mf", "postgresql://***@db/mf"),
        ("postgresql://u:pa@ss:SECRET@db/mf", "postgresql://u:***@db/mf"),
        ("redis://cache:6379/0?db=1", "redis://cache:6379/0?db=1"),
    ],
)
def test_mask_url_hides_query_passwords_and_user_info(text, masked):
    assert mask_url(text) == masked


def test_mask_setting_url_shows_no_user_info_at_all():
    assert mask_setting_url("postgresql://u:pa@ss@h/db?password=x") == "postgresql://***@h/db?password=***"
    assert mask_setting_url("u:p@h/db") == "***@h/db"
    assert mask_setting_url("sqlite:////tmp/r.db") == "sqlite:////tmp/r.db"


def test_a_driver_error_shows_no_piece_of_a_password_holding_an_at_sign(tmp_path, caplog):
    from modelforge_jupyter import ModelForge
    from modelforge_jupyter.core.errors import ServiceUnavailableError

    # Given a DATABASE_URL whose password holds an unescaped '@': libpq splits the user-info at the first '@', so it
    # reports "failed to resolve host 'ZQXb@127.0.0.1'" (a fresh-clone tester saw the piece after the '@' in 503s)
    url = "postgresql+psycopg://postgres:ZQXa@ZQXb@127.0.0.1:5439/db"
    caplog.set_level("DEBUG", logger="modelforge_jupyter")

    # When a ModelForge on it is used
    with pytest.raises(ServiceUnavailableError) as err:
        with ModelForge(database_url=url, redis_url="", cache_dir=str(tmp_path / "c"), database_timeout=2) as forge:
            forge.models()

    # Then the answer says what failed, and neither piece of the password is in it or in any log line
    assert str(err.value).startswith("model registry database unavailable: failed to resolve host '***'")
    assert not any(secret in str(err.value) + caplog.text for secret in ("ZQXa", "ZQXb"))


# -- one table: every door's configuration, the environment export and the README come from SETTINGS ----------------
def test_every_setting_of_the_table_is_a_trait_of_settings_the_server_and_the_magics():
    from modelforge_jupyter.core.settings import SETTINGS
    from modelforge_jupyter.kernel.magics import ModelForgeMagics
    from modelforge_jupyter.server_extension.app import ModelForgeApp

    core = Settings.class_traits(config=True)
    assert set(core) == {s.name for s in SETTINGS}
    for door in (ModelForgeApp, ModelForgeMagics):
        traits, unconfigured = door.class_traits(config=True), door()
        for s in SETTINGS:
            assert type(core[s.name]) is s.kind and type(traits[s.name]) is s.kind, (door, s.name)
            assert getattr(unconfigured, s.name) is None  # unset: the environment's value
            assert traits[s.name].help.startswith(core[s.name].help), (door, s.name)
            assert core[s.name].help.startswith(s.help) and (s.env is None or s.env in core[s.name].help)


def test_the_environment_a_server_exports_gives_another_process_the_same_settings(tmp_path, monkeypatch):
    # Given settings that differ from every default
    values = {name: mf_other_setting_value(name, tmp_path) for name in Settings.class_trait_names(config=True)}
    exported = Settings(**values).environ()

    # When another process reads its environment (only the exported variables set)
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    for var, text in exported.items():
        monkeypatch.setenv(var, text)
    child = Settings()

    # Then it has every setting that has a variable, and only those are exported
    assert set(exported) == set(ENV_VARS.values())
    assert {n: getattr(child, n) for n in ENV_VARS} == {n: values[n] for n in ENV_VARS}


def readme_settings_rows() -> list[tuple[str, str, str]]:
    """(setting, variable, default) of each row of the README's table of settings, as the README shows them."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = text.split("<!-- settings-table:")[1].split("<!-- end of settings-table -->")[0]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in table.splitlines() if line.startswith("| `")]
    return [(row[0].strip("`"), row[1].strip("`"), row[2]) for row in cells]


def test_the_readme_lists_every_setting_with_its_variable_and_its_real_default(monkeypatch):
    from modelforge_jupyter.core.settings import data_dir

    # Given an environment with none of the settings' variables (the data dir: the README's placeholder)
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("MODELFORGE_DATA_DIR", raising=False)
    defaults = Settings()
    rows = readme_settings_rows()

    # Then the README's table names exactly the settings, each with its variable and the default Settings() has
    assert sorted(name for name, _, _ in rows) == sorted(Settings.class_trait_names(config=True))
    for name, var, shown in rows:
        assert var == ENV_VARS.get(name, "none"), name
        actual = getattr(defaults, name)
        value = shown.partition(" (")[0].strip("`")  # "`536870912` (512 MiB)": the value, then a note
        if isinstance(actual, str):
            expected = actual.replace(str(data_dir()), "<jupyter data dir>/modelforge") or "empty"
            assert value == expected, name
        elif isinstance(actual, bool):
            assert value == str(actual).lower(), name
        elif isinstance(actual, dict):
            assert json.loads(value) == actual, name
        else:
            assert type(actual)(value) == actual, name


def test_the_readme_table_is_the_one_generated_from_the_settings_table():
    from pathlib import Path

    from modelforge_jupyter.core.settings import markdown_table

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split("<!-- settings-table:")[1].split("-->", 1)[1].split("<!-- end of settings-table -->")[0]
    assert block.strip() == markdown_table().strip(), "run .venv/bin/python scripts/readme_settings.py"
