"""Where the client's API key comes from: explicit, then ``MODELPORT_API_KEY``, then a file.

The same order serves the Python client and the CLI, so a script, a shell with the variable
exported and an operator on the server machine (whose first start wrote
``<data_dir>/admin.key``) all work without passing the key around:

1. ``api_key=`` / ``--api-key`` given explicitly (an empty string means "send no key");
2. the environment variable ``MODELPORT_API_KEY`` (when set and not empty);
3. the file ``admin.key`` in the data dir: ``MODELPORT_DATA_DIR``, default ``.modelport``.

Like the ``openai`` SDK's ``OPENAI_API_KEY``, this is a client-side lookup: it runs in the
caller's process, never in the server's, which reads its own settings from ``Settings``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

API_KEY_ENV = "MODELPORT_API_KEY"
DATA_DIR_ENV = "MODELPORT_DATA_DIR"
DEFAULT_DATA_DIR = ".modelport"
ADMIN_KEY_FILE = "admin.key"


def admin_key_path(environ: Mapping[str, str] | None = None) -> Path:
    """``<data_dir>/admin.key``, the file the server's first start writes the admin key to."""
    env = os.environ if environ is None else environ
    data_dir = env.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser() / ADMIN_KEY_FILE


def resolve_api_key(
    explicit: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The key to send, or ``None`` for none; see the module docstring for the order.

    A key file that is missing or unreadable counts as no key: the server then answers 401,
    which says more than a local error about a file the caller may never have meant to use.
    """
    if explicit is not None:
        return explicit.strip() or None
    env = os.environ if environ is None else environ
    from_env = env.get(API_KEY_ENV, "").strip()
    if from_env:
        return from_env
    try:
        from_file = admin_key_path(env).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return from_file or None
