"""Traffic routes in the database, so splits, shadows and promotions survive a restart.

``TrafficState`` is the whole route of one model (immutable: a change builds a new one);
``TrafficRecords`` saves, loads and deletes them. Access checks stay with the caller
(``engine/traffic.py``): these functions trust the model name they are given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from modelport.engine.registry_rows import model_row
from modelport.storage.db import Database
from modelport.storage.tables import ModelRow, TrafficRouteRow, utcnow


@dataclass(frozen=True)
class TrafficState:
    """How one model's requests are split between its deployments.

    ``stable`` gets every request the ``weights`` (percent per other deployment) do not
    claim; ``shadow`` receives a copy of each request; ``previous`` is where ``rollback``
    returns after a promotion.
    """

    model: str
    stable: str
    weights: dict[str, int] = field(default_factory=dict)
    shadow: str | None = None
    previous: str | None = None

    def trivial(self) -> bool:
        """Whether the route changes nothing (the model's own deployment takes it all)."""
        return (
            self.stable == self.model
            and not any(self.weights.values())
            and self.shadow is None
            and self.previous is None
        )

    def shares(self) -> dict[str, int]:
        """Deployment → percent, the stable one included (never below zero)."""
        rest = 100 - sum(self.weights.values())
        shares = {self.stable: max(rest, 0)}
        for name, weight in self.weights.items():
            if name != self.stable:
                shares[name] = weight
        return shares


class TrafficRecords:
    """Load, save and delete ``TrafficState`` rows."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def load_all(self) -> list[TrafficState]:
        with self._db.session() as s:
            rows = s.execute(
                select(TrafficRouteRow, ModelRow.name).join(
                    ModelRow, TrafficRouteRow.model_id == ModelRow.id
                )
            ).all()
            return [_state(row, name) for row, name in rows]

    def save(self, state: TrafficState) -> None:
        """Store ``state``, or remove the row when the route is trivial."""
        with self._db.session(write=True) as s:
            model = model_row(s, state.model, lock=True)
            row = s.scalar(select(TrafficRouteRow).where(TrafficRouteRow.model_id == model.id))
            if state.trivial():
                if row is not None:
                    s.delete(row)
                return
            if row is None:
                row = TrafficRouteRow(model_id=model.id)
                s.add(row)
            row.stable = state.stable
            row.weights = {k: v for k, v in state.weights.items() if v}
            row.shadow = state.shadow
            row.previous = state.previous
            row.updated_at = utcnow()


def _state(row: TrafficRouteRow, model: str) -> TrafficState:
    return TrafficState(
        model=model,
        stable=row.stable,
        weights={str(k): int(v) for k, v in (row.weights or {}).items()},
        shadow=row.shadow,
        previous=row.previous,
    )
