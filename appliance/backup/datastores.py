"""The three stores that hold an install's data (the event bus holds none), opened for a backup
or a restore, with what a restore needs to know about them: are they empty, and wiping them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..settings import Settings
from ..stores.documents import DocumentStore, open_documents
from ..stores.objects import ObjectStore, open_objects
from ..stores.relational import Relational
from .portal import Portal
from .rows import table_counts

LIST_BATCH = 500


@dataclass
class DataStores:
    db: Relational
    documents: DocumentStore
    objects: ObjectStore

    def kinds(self) -> dict[str, str]:
        return {"database": self.db.kind, "documents": self.documents.kind, "objects": self.objects.kind}


@contextlib.contextmanager
def open_data_stores(settings: Settings, portal: Portal) -> Iterator[DataStores]:
    """Open (and migrate) the database, the document and the object store; StoreUnavailable names
    the one that fails and the fix."""
    with contextlib.ExitStack() as stack:
        db = Relational(settings.database_url)
        portal.call(db.open())
        stack.callback(lambda: portal.call(db.close()))
        documents = open_documents(settings.documents_url)
        portal.call(documents.open())
        stack.callback(lambda: portal.call(documents.close()))
        objects = open_objects(settings.objects_url)
        portal.call(objects.open())
        stack.callback(lambda: portal.call(objects.close()))
        yield DataStores(db, documents, objects)


def describe_contents(stores: DataStores, portal: Portal, skip: Callable[[str], bool]) -> str | None:
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
