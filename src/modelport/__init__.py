"""modelport: self-hosted AI models as a service.

Public names: ``Client``, ``AsyncClient`` (HTTP clients) and ``Settings``. Importing this
package has no side effects and stays cheap; the clients are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "Settings", "__version__"]

if TYPE_CHECKING:
    from modelport.client import AsyncClient, Client
    from modelport.settings import Settings


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        from modelport import client

        return getattr(client, name)
    if name == "Settings":
        from modelport.settings import Settings

        return Settings
    raise AttributeError(f"module 'modelport' has no attribute {name!r}")
