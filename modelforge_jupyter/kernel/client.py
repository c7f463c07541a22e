"""``modelforge_jupyter.kernel.client``: the HTTP client's import path in notebooks and the README. The client itself
is ``modelforge_jupyter.core.client`` (core), which the CLI's ``bench --http`` uses too."""

from ..core.client import (  # noqa: F401
    ENV_TOKEN,
    ENV_URL,
    ModelForgeClient,
    ServerInfo,
    ServerNotFoundError,
    ServerUnreachableError,
    connect,
    dumps,
    find_server,
)
