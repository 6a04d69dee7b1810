"""The document store: schemaless JSON documents in named collections (transcripts, AI results).

``sqlite:///PATH`` keeps them as JSON in one table of its own SQLite file; ``mongodb://HOST:PORT/DB``
keeps them in MongoDB (pymongo's asyncio client). Documents hold JSON values only, and every
document has a string ``_id``.

Both stores understand the same small filter language, and nothing more:

    {"field": value}                      equal
    {"field": {"$in": [value, ...]}}      equal to one of the values
    {"field": {"$ne": value}}             not equal (a missing field is not equal)
    {"field": {"$gt": value}}             greater; also "$gte", "$lt", "$lte"

A field is a name or a dotted path into nested objects (``"speaker.name"``); a value is a str,
int, float or bool, never None (MongoDB look-alikes disagree on how null meets a missing field);
compare values of one type. All conditions must hold. Results come sorted by ``_id`` unless
``sort`` says otherwise, ties broken by ``_id``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from ..settings import mask_url_password
from .errors import StoreUnavailable
from .urls import local_path, scheme

T = TypeVar("T")

Filter = dict[str, Any]
Sort = list[tuple[str, int]]

BATCH = 500
COMPARISONS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = {"$in", "$ne", *COMPARISONS}
SCALARS = (str, int, float, bool)
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FIELD = re.compile(rf"{NAME.pattern}(\.{NAME.pattern})*")  # names joined by dots


class DocumentExists(Exception):
    """A document with that ``_id`` is already in the collection."""


def check_field(field: str, pattern: re.Pattern[str] = FIELD) -> str:
    if not isinstance(field, str) or not pattern.fullmatch(field):
        raise ValueError(f"{field!r} is not a field name the document store accepts")
    return field


def check_scalar(value: Any) -> Any:
    if not isinstance(value, SCALARS):
        raise ValueError(f"filters compare str, int, float or bool values, not {value!r}")
    return value


def conditions(filter: Filter | None) -> list[tuple[str, str, Any]]:
    """Check a filter against the filter language; return it as (field, operator, value) triples,
    with "$eq" for plain equality."""
    out: list[tuple[str, str, Any]] = []
    for field, spec in (filter or {}).items():
        check_field(field)
        if not isinstance(spec, dict):
            out.append((field, "$eq", check_scalar(spec)))
            continue
        if not spec:
            raise ValueError(f"filter on {field!r} names no operator")
        for op, value in spec.items():
            if op not in OPERATORS:
                raise ValueError(f"filter operator {op!r} on {field!r}: use one of {sorted(OPERATORS)}")
            if op == "$in":
                if not isinstance(value, list):
                    raise ValueError(f"$in on {field!r} takes a list")
                value = [check_scalar(item) for item in value]
            else:
                check_scalar(value)
            out.append((field, op, value))
    return out


def sort_keys(sort: Sort | None) -> Sort:
    """The sort order to apply: the given keys (direction 1 or -1), then ``_id`` to break ties."""
    keys = list(sort or [])
    for field, direction in keys:
        check_field(field)
        if direction not in (1, -1):
            raise ValueError(f"sort direction for {field!r} must be 1 or -1, not {direction!r}")
    if "_id" not in (field for field, _ in keys):
        keys.append(("_id", 1))
    return keys


def check_collection(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a collection name: use letters, digits and underscores")
    return name


def document_id(doc: dict[str, Any]) -> str:
    if "_id" not in doc:
        return uuid.uuid4().hex
    doc_id = doc["_id"]
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError(f"a document _id must be a non-empty str, not {doc_id!r}")
    return doc_id


def check_update(fields: dict[str, Any]) -> dict[str, Any]:
    if not fields:
        raise ValueError("update() needs at least one field to set")
    for field in fields:
        check_field(field, NAME)
        if field == "_id":
            raise ValueError("a document's _id cannot change")
    return fields


class DocumentStore(ABC):
    """JSON documents in named collections; see the module docstring for the filter language."""

    kind: str
    url: str

    def describe(self) -> str:
        """The store's URL with any password masked."""
        return mask_url_password(self.url)

    @abstractmethod
    async def open(self) -> None:
        """Connect and create what is needed; raise StoreUnavailable with the fix when impossible."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise when the store cannot be used."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def insert(self, collection: str, doc: dict[str, Any]) -> str:
        """Store a copy of ``doc`` under its ``_id`` (a new uuid4 hex when it has none); return the
        id. Raise DocumentExists when the collection already has that id. A collection's name is
        made of letters, digits and underscores, as some MongoDB look-alikes demand."""

    @abstractmethod
    async def get(self, collection: str, id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def find(
        self, collection: str, filter: Filter | None = None, *,
        sort: Sort | None = None, limit: int = 0, skip: int = 0,
    ) -> list[dict[str, Any]]:
        """The matching documents in sort order, after skipping ``skip``; at most ``limit`` (0: all)."""

    @abstractmethod
    async def update(self, collection: str, id: str, fields: dict[str, Any]) -> bool:
        """Set top-level fields of one document; return whether the document exists."""

    @abstractmethod
    async def delete(self, collection: str, id: str) -> bool:
        """Delete one document; return whether it existed."""

    @abstractmethod
    async def delete_many(self, collection: str, filter: Filter) -> int:
        """Delete the matching documents (all of them for ``{}``); return how many."""

    @abstractmethod
    async def count(self, collection: str, filter: Filter | None = None) -> int: ...

    @abstractmethod
    async def search_text(
        self, collection: str, field: str, text: str, filter: Filter | None = None,
        limit: int = 50, *, sort: Sort | None = None,
    ) -> list[dict[str, Any]]:
        """Documents whose string ``field`` contains ``text``, ignoring case, that also match
        ``filter``; at most ``limit`` of them (0: all)."""

    @abstractmethod
    async def collections(self) -> list[str]:
        """The names of the collections that hold documents, sorted."""

    @abstractmethod
    def iter_all(self, collection: str) -> AsyncIterator[dict[str, Any]]:
        """Every document of a collection in ``_id`` order, fetched in batches (for backups)."""


def sql_column(field: str) -> str:
    """The SQL expression for a checked field name."""
    return "id" if field == "_id" else f"json_extract(body, '$.{field}')"


def sql_where(collection: str, filter: Filter | None) -> tuple[str, list[Any]]:
    clauses, params = ["collection = ?"], [collection]
    for field, op, value in conditions(filter):
        column = sql_column(field)
        if op == "$eq":
            clauses.append(f"{column} = ?")
            params.append(value)
        elif op == "$ne":
            clauses.append(f"{column} IS NOT ?")  # true for a missing field (NULL), as in MongoDB
            params.append(value)
        elif op == "$in":
            clauses.append(f"{column} IN ({', '.join('?' * len(value))})")
            params.extend(value)
        else:
            clauses.append(f"{column} {COMPARISONS[op]} ?")
            params.append(value)
    return " AND ".join(clauses), params


def sql_order(sort: Sort | None) -> str:
    return ", ".join(f"{sql_column(field)} {'ASC' if d == 1 else 'DESC'}" for field, d in sort_keys(sort))


def contains_ignoring_case(haystack: str, needle: str) -> bool:
    return needle.lower() in haystack.lower()


class SqliteDocuments(DocumentStore):
    """Documents as JSON text in one SQLite table, queried with json_extract.

    One connection, used from one worker thread, so the event loop never waits on SQLite.
    """

    kind = "sqlite"

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = local_path(url)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="documents")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the document store is not open: call open() first")
        return self._conn

    def _execute(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self._connection().execute(sql, params)

    def _changes(self, sql: str, params: list[Any] | tuple[Any, ...]) -> int:
        """Run a statement; return how many rows it changed."""
        return self._execute(sql, params).rowcount

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS documents ("
                " collection TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,"
                " PRIMARY KEY (collection, id))"
            )
        except sqlite3.Error:
            conn.close()
            raise
        conn.create_function("contains_ignoring_case", 2, contains_ignoring_case, deterministic=True)
        self._conn = conn

    async def open(self) -> None:
        try:
            await self._run(self._open)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(
                f"cannot open the document store at {self.describe()} ({exc}); make its directory "
                "writable by the confmeet user or fix the 'documents' URL"
            ) from None

    async def ping(self) -> None:
        await self._run(lambda: self._execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def insert(self, collection: str, doc: dict[str, Any]) -> str:
        check_collection(collection)
        doc_id = document_id(doc)
        body = json.dumps({**doc, "_id": doc_id}, separators=(",", ":"), ensure_ascii=False)
        try:
            await self._run(self._changes, "INSERT INTO documents (collection, id, body) VALUES (?, ?, ?)",
                            (collection, doc_id, body))
        except sqlite3.IntegrityError:
            raise DocumentExists(f"{collection} already has a document {doc_id!r}") from None
        return doc_id

    async def get(self, collection: str, id: str) -> dict[str, Any] | None:
        row = await self._run(lambda: self._execute(
            "SELECT body FROM documents WHERE collection = ? AND id = ?", (collection, id)).fetchone())
        return None if row is None else json.loads(row[0])

    async def _select(self, where: str, params: list[Any], sort: Sort | None, limit: int, skip: int
                      ) -> list[dict[str, Any]]:
        sql = f"SELECT body FROM documents WHERE {where} ORDER BY {sql_order(sort)} LIMIT ? OFFSET ?"
        rows = await self._run(lambda: self._execute(sql, [*params, limit or -1, skip]).fetchall())
        return [json.loads(body) for (body,) in rows]

    async def find(
        self, collection: str, filter: Filter | None = None, *,
        sort: Sort | None = None, limit: int = 0, skip: int = 0,
    ) -> list[dict[str, Any]]:
        where, params = sql_where(collection, filter)
        return await self._select(where, params, sort, limit, skip)

    async def update(self, collection: str, id: str, fields: dict[str, Any]) -> bool:
        check_update(fields)
        paths = ", ".join(f"'$.{field}', json(?)" for field in fields)
        values = [json.dumps(value, ensure_ascii=False) for value in fields.values()]
        changed = await self._run(self._changes, f"UPDATE documents SET body = json_set(body, {paths}) "
                                  "WHERE collection = ? AND id = ?", [*values, collection, id])
        return changed > 0

    async def delete(self, collection: str, id: str) -> bool:
        changed = await self._run(self._changes, "DELETE FROM documents WHERE collection = ? AND id = ?",
                                  (collection, id))
        return changed > 0

    async def delete_many(self, collection: str, filter: Filter) -> int:
        where, params = sql_where(collection, filter)
        return await self._run(self._changes, f"DELETE FROM documents WHERE {where}", params)

    async def count(self, collection: str, filter: Filter | None = None) -> int:
        where, params = sql_where(collection, filter)
        row = await self._run(lambda: self._execute(f"SELECT COUNT(*) FROM documents WHERE {where}",
                                                    params).fetchone())
        return row[0]

    async def search_text(
        self, collection: str, field: str, text: str, filter: Filter | None = None,
        limit: int = 50, *, sort: Sort | None = None,
    ) -> list[dict[str, Any]]:
        where, params = sql_where(collection, filter)
        path = f"'$.{check_field(field)}'"
        where += f" AND json_type(body, {path}) = 'text' AND contains_ignoring_case(json_extract(body, {path}), ?)"
        return await self._select(where, [*params, text], sort, limit, 0)

    async def collections(self) -> list[str]:
        rows = await self._run(lambda: self._execute(
            "SELECT DISTINCT collection FROM documents ORDER BY collection").fetchall())
        return [name for (name,) in rows]

    async def iter_all(self, collection: str) -> AsyncIterator[dict[str, Any]]:
        last = ""
        while True:
            rows = await self._run(lambda: self._execute(
                "SELECT id, body FROM documents WHERE collection = ? AND id > ? ORDER BY id LIMIT ?",
                (collection, last, BATCH)).fetchall())
            for _, body in rows:
                yield json.loads(body)
            if len(rows) < BATCH:
                return
            last = rows[-1][0]


class MongoDocuments(DocumentStore):
    """Documents in a MongoDB database (the URL's path names it; "confmeet" when it has none)."""

    kind = "mongodb"

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                url, serverSelectionTimeoutMS=3000)
        except PyMongoError as exc:
            raise StoreUnavailable(
                f"documents URL {self.describe()}: {exc}; use mongodb://HOST:PORT/DATABASE") from None
        self._db = self._client.get_default_database("confmeet")

    async def open(self) -> None:
        try:
            await self._db.command("ping")
        except PyMongoError as exc:
            reason = str(exc).partition(" (configured timeouts")[0]
            raise StoreUnavailable(
                f"cannot reach MongoDB at {self.describe()} ({reason}); start MongoDB, check the user "
                "and password, or fix the 'documents' URL"
            ) from None

    async def ping(self) -> None:
        await self._db.command("ping")

    async def close(self) -> None:
        await self._client.close()

    async def insert(self, collection: str, doc: dict[str, Any]) -> str:
        check_collection(collection)
        doc_id = document_id(doc)
        try:
            await self._db[collection].insert_one({**doc, "_id": doc_id})
        except DuplicateKeyError:
            raise DocumentExists(f"{collection} already has a document {doc_id!r}") from None
        return doc_id

    async def get(self, collection: str, id: str) -> dict[str, Any] | None:
        return await self._db[collection].find_one({"_id": id})

    async def find(
        self, collection: str, filter: Filter | None = None, *,
        sort: Sort | None = None, limit: int = 0, skip: int = 0,
    ) -> list[dict[str, Any]]:
        conditions(filter)
        cursor = self._db[collection].find(filter or {}, sort=sort_keys(sort), limit=limit, skip=skip)
        return await cursor.to_list()

    async def update(self, collection: str, id: str, fields: dict[str, Any]) -> bool:
        result = await self._db[collection].update_one({"_id": id}, {"$set": check_update(fields)})
        return result.matched_count > 0

    async def delete(self, collection: str, id: str) -> bool:
        result = await self._db[collection].delete_one({"_id": id})
        return result.deleted_count > 0

    async def delete_many(self, collection: str, filter: Filter) -> int:
        conditions(filter)
        result = await self._db[collection].delete_many(filter)
        return result.deleted_count

    async def count(self, collection: str, filter: Filter | None = None) -> int:
        conditions(filter)
        return await self._db[collection].count_documents(filter or {})

    async def search_text(
        self, collection: str, field: str, text: str, filter: Filter | None = None,
        limit: int = 50, *, sort: Sort | None = None,
    ) -> list[dict[str, Any]]:
        conditions(filter)
        match = {check_field(field): {"$type": "string", "$regex": re.escape(text), "$options": "i"}}
        query = {"$and": [filter, match]} if filter else match
        cursor = self._db[collection].find(query, sort=sort_keys(sort), limit=limit)
        return await cursor.to_list()

    async def collections(self) -> list[str]:
        names = await self._db.list_collection_names()
        return sorted([name for name in names if not name.startswith("system.")
                       and await self._db[name].find_one({}, projection={"_id": 1}) is not None])

    async def iter_all(self, collection: str) -> AsyncIterator[dict[str, Any]]:
        async with self._db[collection].find({}, sort=[("_id", 1)], batch_size=BATCH) as cursor:
            async for doc in cursor:
                yield doc


def open_documents(url: str) -> DocumentStore:
    """The document store a URL names (not yet opened)."""
    kind = scheme(url)
    if kind == "sqlite":
        return SqliteDocuments(url)
    if kind == "mongodb":
        return MongoDocuments(url)
    raise StoreUnavailable(
        f"documents URL {mask_url_password(url)!r}: use sqlite:///PATH or mongodb://HOST:PORT/DATABASE")
