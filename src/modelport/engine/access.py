"""Who may see and change which model: ownership, visibility and sharing, checked in memory.

Every model belongs to a tenant (``None``: the platform — models from before tenancy and the
bundled demos) and is ``private`` (owner only), ``shared`` (owner plus named tenants) or
``public`` (every tenant). A deployment follows its model. Platform admins see and change
everything; callers outside a request (start-up, restore) are not restricted.

Rules, applied on every route through the registry and the deployment table:

- *see* (list, get, call): admin, the owner, anyone for ``public``, the named tenants for
  ``shared``. Anything else is reported exactly as a model that does not exist (404, same
  message), so no route leaks another tenant's names.
- *change* (new version, alias, visibility, delete, deploy, scale, undeploy): admin or the
  owner. Someone who may see a model but not change it gets 403.

``AccessIndex`` keeps name → ``Owner`` in memory (loaded from the database on first use,
updated by the registry on every ownership change), so the inference hot path pays a dict
lookup, not a query.

Pipelines (``engine/pipelines.py``) carry an ``Owner`` of their own under the same rules;
``audience_sees`` is the extra check before one is shared or made public (its steps must be
visible to that audience).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from modelport.engine.principal import Principal, current_principal
from modelport.errors import PermissionDenied

Visibility = Literal["private", "shared", "public"]
VISIBILITIES: tuple[Visibility, ...] = ("private", "shared", "public")


@dataclass(frozen=True)
class Owner:
    """Ownership of one model."""

    tenant_id: int | None
    visibility: str = "private"
    shared_with: frozenset[int] = frozenset()


def may_see(principal: Principal | None, owner: Owner | None) -> bool:
    """Whether ``principal`` may see a model owned as ``owner`` (None: unknown model)."""
    if principal is None or principal.is_admin:
        return True
    return _tenant_sees(principal.tenant_id, owner)


def _tenant_sees(tenant_id: int, owner: Owner | None) -> bool:
    if owner is None:
        return False
    if owner.visibility == "public" or owner.tenant_id == tenant_id:
        return True
    return owner.visibility == "shared" and tenant_id in owner.shared_with


def audience_sees(audience: Owner, step: Owner | None) -> bool:
    """Whether every tenant that may see something owned as ``audience`` may see ``step``.

    The check before a pipeline becomes shared or public: ``public`` needs a public step;
    ``shared`` needs a step each named tenant may see (public, shared with it, or its own).
    A private audience (the owner alone) is not checked here: the owner's own rights apply.
    """
    if audience.visibility == "public":
        return step is not None and step.visibility == "public"
    if audience.visibility == "shared":
        return all(_tenant_sees(t, step) for t in audience.shared_with)
    return True


def may_change(principal: Principal | None, owner: Owner | None) -> bool:
    """Whether ``principal`` may change a model owned as ``owner``."""
    if principal is None or principal.is_admin:
        return True
    return owner is not None and owner.tenant_id == principal.tenant_id


class AccessIndex:
    """Model name → ``Owner``, in memory (see the module docstring)."""

    def __init__(self, load: Callable[[], dict[str, Owner]]) -> None:
        self._load = load
        self._owners: dict[str, Owner] | None = None
        self._lock = threading.Lock()  # registry writes run in worker threads

    def _table(self) -> dict[str, Owner]:
        owners = self._owners
        if owners is None:
            with self._lock:
                if self._owners is None:
                    self._owners = self._load()
                owners = self._owners
        return owners

    def owner(self, name: str) -> Owner | None:
        return self._table().get(name)

    def set(self, name: str, owner: Owner) -> None:
        """Record ``name``'s ownership (after the database commit)."""
        table = self._table()
        with self._lock:
            table[name] = owner

    def forget(self, name: str) -> None:
        table = self._table()
        with self._lock:
            table.pop(name, None)

    def reload(self) -> None:
        """Drop the cache; the next lookup reads the database again."""
        with self._lock:
            self._owners = None

    def visible(self, name: str, principal: Principal | None = None) -> bool:
        """Whether the current caller (or ``principal``) may see model ``name``."""
        who = principal if principal is not None else current_principal()
        return who is None or who.is_admin or may_see(who, self._table().get(name))

    def filter(self, names: Iterable[str]) -> list[str]:
        """The names in ``names`` the current caller may see, in order."""
        who = current_principal()
        if who is None or who.is_admin:
            return list(names)
        table = self._table()
        return [n for n in names if may_see(who, table.get(n))]

    def check_change(self, name: str) -> None:
        """Raise ``PermissionDenied`` if the caller may see but not change ``name``.

        Call it after a visibility check (an invisible model is "not found" instead).
        """
        who = current_principal()
        if not may_change(who, self._table().get(name)):
            raise PermissionDenied(
                f"model {name!r} belongs to another tenant: it can be used, not changed",
                param="model",
            )
