"""The three stores that hold an install's data (the event bus holds none), opened for a backup
or a restore, with what a restore needs to know about them: are they empty, and wiping them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from ..settings import Settings
from ..stores import Stores, open_stores
from ..stores.objects import ObjectStore
from .portal import Portal
from .rows import table_counts

LIST_BATCH = 500


@contextlib.contextmanager
def data_stores(settings: Settings, portal: Portal) -> Iterator[Stores]:
    """The stores open_stores opens (migrating the database), without the bus, for the block;
    StoreUnavailable names the one that fails and the fix."""
    stores = portal.call(open_stores(settings, with_bus=False))
    try:
        yield stores
    finally:
        portal.call(stores.close())


def describe_contents(stores: Stores, portal: Portal, skip: Callable[[str], bool]) -> str | None:
    """What the stores already hold, in words, or None when they are empty."""
    held = []
    rows = {table: count for table, count in portal.call(stores.db.run(table_counts)).items() if count}
    if rows:
        held.append(", ".join(f"{count} {table} rows" for table, count in rows.items()))
    collections = portal.call(stores.documents.collections())
    if collections:
        held.append(f"documents in {', '.join(collections)}")
    for info in portal.iterate(stores.objects.list(""), LIST_BATCH):
        if not skip(info.key):
            held.append("objects")
            break
    return "; ".join(held) or None


async def delete_objects(objects: ObjectStore, keys: list[str], concurrency: int = 8) -> None:
    limit = asyncio.Semaphore(concurrency)

    async def one(key: str) -> None:
        async with limit:
            await objects.delete(key)

    await asyncio.gather(*(one(key) for key in keys))
