"""The four backing stores, each chosen by a URL in the settings (see docs/architecture.md)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from ..settings import Settings
from .bus import EventBus, open_bus
from .documents import DocumentStore, open_documents
from .errors import StoreUnavailable
from .objects import ObjectStore, open_objects
from .relational import Relational

__all__ = ["Stores", "StoreUnavailable", "open_stores"]

PING_TIMEOUT = 3.0


@dataclass
class Stores:
    db: Relational
    bus: EventBus | None  # None when opened without it (backups: the bus holds no data)
    documents: DocumentStore
    objects: ObjectStore

    def items(self) -> list[tuple[str, Any]]:
        return [(name, store) for name, store in (("database", self.db), ("bus", self.bus),
                                                  ("documents", self.documents), ("objects", self.objects))
                if store is not None]

    def kinds(self) -> dict[str, str]:
        return {name: store.kind for name, store in self.items()}

    async def check(self) -> dict[str, dict[str, Any]]:
        """Ping every store; report each one's state, kind and latency (what /readyz shows)."""

        async def one(store: Any) -> dict[str, Any]:
            start = time.perf_counter()
            try:
                await asyncio.wait_for(store.ping(), PING_TIMEOUT)
            except Exception as exc:  # any failure means "not ready"; the text says why
                return {"ok": False, "kind": store.kind, "error": str(exc) or type(exc).__name__}
            return {"ok": True, "kind": store.kind,
                    "latency_ms": round((time.perf_counter() - start) * 1000, 2)}

        results = await asyncio.gather(*(one(store) for _, store in self.items()))
        return {name: result for (name, _), result in zip(self.items(), results)}

    async def close(self) -> None:
        for _, store in reversed(self.items()):
            await store.close()


async def open_stores(settings: Settings, with_bus: bool = True) -> Stores:
    """Open and check every store (the event bus only ``with_bus``), migrating the database; raise
    StoreUnavailable naming the first that fails and the fix."""
    opened: list[Any] = []
    try:
        db = Relational(settings.database_url)
        await db.open()
        opened.append(db)
        bus = open_bus(settings.bus) if with_bus else None
        if bus is not None:
            await bus.open()
            opened.append(bus)
        documents = open_documents(settings.documents_url)
        await documents.open()
        opened.append(documents)
        objects = open_objects(settings.objects_url)
        await objects.open()
        opened.append(objects)
    except BaseException:
        for store in reversed(opened):
            await store.close()
        raise
    return Stores(db, bus, documents, objects)
