"""The tests' one pytest plugin (loaded by the root ``conftest.py``): every fixture and helper a test shares, each
defined once, all prefixed ``mf_`` (as jupyter_server's plugin prefixes its own ``jp_``).

Fixtures (requested by name):
- services (``services``): ``mf_backend`` (``embedded`` | ``services``), ``mf_settings``, ``mf_forge``,
  ``mf_module_settings`` / ``mf_module_forge`` / ``mf_module_broker`` (for a module whose tests share a started
  process; ``mf_fresh_services``: a database and key prefix for such a fixture),
  ``mf_embedded_settings``, ``mf_services_settings``, ``mf_postgres_url`` (a fresh database), ``mf_redis`` (client, a
  fresh key prefix), ``mf_redis_url``, ``mf_broker`` (RabbitMQ, then Redis), ``mf_silent_listener`` (a service that
  hangs);
- processes (``processes``): ``mf_redis_server`` (a redis-server the test may kill), ``mf_warm_engine`` (one-time
  ONNX Runtime set-up done before a test measures memory);
- Jupyter (``jupyter``): ``mf_live_server`` (one ``jupyter server`` for the session), ``mf_live_settings``,
  ``mf_shell`` (IPython shells with the extension), ``mf_ip`` (one configured for the backend);
- the reference (``reference``): ``mf_silero_path``;
- the notebooks under nbval get their server and backend from hooks (``notebooks``), not from fixtures.

Helpers (imported: ``from .mf_plugin import mf_raw_run``): the raw-onnxruntime reference ``mf_raw_run`` /
``mf_raw_outputs`` and the ZipMap normaliser ``mf_zipmap``; test models; ``mf_start_server`` (the launcher of every
``jupyter server`` a test starts), ``mf_launch`` / ``mf_stop_process`` / ``mf_wait_until`` for other processes,
``mf_free_port``, ``mf_http``; the test's own view of the prediction cache (``mf_cached_keys``...); values for
every setting of the table (``setting_values``: ones refused, ones other than the default).
"""

from .jupyter import (
    LiveServer,
    mf_http,
    mf_isolated_env,
    mf_make_shell,
    mf_run_cell,
    mf_run_in_server_kernel,
    mf_start_server,
)
from .models import (
    FOREVER,
    MF_SECRET,
    mf_assert_registers_refused,
    mf_constant_of_shape_model,
    mf_external_model,
    mf_identity_model,
    mf_scale_model,
    mf_spin_input,
    mf_spin_model,
    mf_unshaped_model,
)
from .processes import (
    MiB,
    MfProcess,
    mf_free_port,
    mf_launch,
    mf_peak_rss_growth,
    mf_proc_status,
    mf_reset_peak_rss,
    mf_stop_process,
    mf_wait_until,
)
from .reference import SAMPLES, mf_raw_outputs, mf_raw_providers, mf_raw_run, mf_raw_session, mf_zipmap
from .services import (
    POSTGRES_URL,
    REDIS_URL,
    REFERENCE_THREADS,
    mf_cache_ttl,
    mf_cache_value,
    mf_cached_keys,
    mf_clear_registry,
    mf_delete_queue,
    mf_embedded,
    mf_fresh_services,
    mf_service_missing,
    mf_skip_unless_ci,
)
from .setting_values import ANY_TEXT, BAD_TEXT, mf_bad_setting_values, mf_other_setting_value

pytest_plugins = [  # the modules with fixtures or hooks; pytest_jupyter's for the in-process server (jp_fetch...)
    "tests.mf_plugin.services",
    "tests.mf_plugin.processes",
    "tests.mf_plugin.reference",
    "tests.mf_plugin.jupyter",
    "tests.mf_plugin.notebooks",
    "pytest_jupyter.jupyter_server",
]

__all__ = [
    "ANY_TEXT", "BAD_TEXT", "FOREVER", "LiveServer", "MF_SECRET", "MfProcess", "MiB", "POSTGRES_URL", "REDIS_URL",
    "REFERENCE_THREADS",
    "SAMPLES", "mf_bad_setting_values", "mf_cache_ttl", "mf_cache_value", "mf_cached_keys",
    "mf_clear_registry", "mf_assert_registers_refused", "mf_delete_queue",
    "mf_constant_of_shape_model", "mf_embedded", "mf_external_model", "mf_free_port", "mf_fresh_services", "mf_http",
    "mf_identity_model", "mf_isolated_env", "mf_launch", "mf_make_shell", "mf_other_setting_value",
    "mf_peak_rss_growth", "mf_proc_status", "mf_raw_outputs", "mf_raw_providers", "mf_raw_run", "mf_raw_session",
    "mf_reset_peak_rss", "mf_run_cell", "mf_run_in_server_kernel", "mf_scale_model", "mf_service_missing",
    "mf_skip_unless_ci", "mf_spin_input", "mf_spin_model", "mf_start_server", "mf_stop_process", "mf_unshaped_model",
    "mf_wait_until", "mf_zipmap",
]
