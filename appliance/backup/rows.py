"""Relational rows in a form no database owns: one JSON object per row, keyed by column name.

Datetimes become ISO 8601 text (naive, UTC, microseconds kept), booleans JSON booleans, JSON
columns their JSON value, foreign keys the referenced id. So a SQLite backup restores into
PostgreSQL and back. Tables go in foreign-key order, parents first.

:class:`Snapshot` reads every table inside one read transaction (REPEATABLE READ, READ ONLY on
PostgreSQL; a deferred read transaction on SQLite, which in WAL mode never blocks the appliance's
writers): whatever the appliance writes meanwhile, the rows copied are the database at one instant.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import peewee as pw

from ..stores.relational import MODELS, BaseModel, JSONField, schema_version

TABLES: list[type[BaseModel]] = list(pw.sort_models(MODELS))
BY_NAME: dict[str, type[BaseModel]] = {model._meta.table_name: model for model in TABLES}
PAGE = 1000
INSERT_BATCH = 500


def table_name(model: type[BaseModel]) -> str:
    return model._meta.table_name


def table_rank(name: str) -> int:
    """The table's place in restore order; KeyError for a table this version does not have."""
    return TABLES.index(BY_NAME[name])


def columns(model: type[BaseModel]) -> list[pw.Field]:
    return list(model._meta.sorted_fields)


def position(model: type[BaseModel], field: pw.Field) -> int:
    """Where ``field`` is in ``columns(model)`` (identity: peewee's == builds an expression)."""
    return next(i for i, candidate in enumerate(columns(model)) if candidate is field)


def encode_row(model: type[BaseModel], values: tuple) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, value in zip(columns(model), values):
        if isinstance(value, (dt.datetime, dt.date, dt.time)):
            value = value.isoformat()
        out[field.column_name] = value
    return out


def _decode_value(field: pw.Field, value: Any) -> Any:
    if value is None:
        if not field.null and not field.primary_key:
            raise ValueError(f"column {field.column_name} may not be null")
        return None
    if isinstance(field, JSONField):
        return value
    if isinstance(field, pw.ForeignKeyField):
        return _decode_value(field.rel_field, value)
    if isinstance(field, pw.DateTimeField):
        return dt.datetime.fromisoformat(value)
    if isinstance(field, pw.BooleanField):
        if not isinstance(value, bool):
            raise ValueError(f"column {field.column_name} holds {value!r}, not a boolean")
        return value
    if isinstance(field, (pw.IntegerField, pw.AutoField)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"column {field.column_name} holds {value!r}, not an integer")
        return value
    if isinstance(field, pw.FloatField):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"column {field.column_name} holds {value!r}, not a number")
        return float(value)
    if isinstance(field, pw.CharField | pw.TextField):
        if not isinstance(value, str):
            raise ValueError(f"column {field.column_name} holds {value!r}, not text")
        return value
    raise ValueError(f"column {field.column_name} has a type the backup does not know")


def decode_row(model: type[BaseModel], data: Any) -> dict[pw.Field, Any]:
    """A row read back from the archive, ready for ``insert_many``; ValueError names what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("a row is not a JSON object")
    fields = {field.column_name: field for field in columns(model)}
    if set(data) != set(fields):
        missing, extra = sorted(set(fields) - set(data)), sorted(set(data) - set(fields))
        raise ValueError(f"row columns differ from this version's table: missing {missing}, unknown {extra}")
    try:
        return {fields[name]: _decode_value(fields[name], value) for name, value in data.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


class Snapshot:
    """``with Snapshot(db) as snap: snap.counts; snap.rows(User)`` on one thread, one connection."""

    def __init__(self, db: pw.Database) -> None:
        self.db = db
        self.counts: dict[str, int] = {}
        self.schema_version = 0
        self._txn: Any = None

    def __enter__(self) -> Snapshot:
        self.db.connect(reuse_if_open=True)
        if isinstance(self.db, pw.PostgresqlDatabase):
            self._txn = self.db.transaction(isolation_level="REPEATABLE READ")
            self._txn.__enter__()
            self.db.execute_sql("SET TRANSACTION READ ONLY")
        else:
            self._txn = self.db.transaction()
            self._txn.__enter__()
        # The first read fixes the snapshot; the counts size the progress bars.
        self.counts = {table_name(model): model.select().count() for model in TABLES}
        self.schema_version = schema_version(self.db)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._txn.__exit__(None, None, None)  # read only: ending it changes nothing
        finally:
            self.db.close()

    def pages(self, model: type[BaseModel]) -> Iterator[list[tuple]]:
        """Every row of a table in primary-key order, a page at a time (keyset pagination, so
        memory stays flat however large the table). Columns in ``columns(model)`` order."""
        pk = model._meta.primary_key
        at = position(model, pk)
        last: Any = None
        while True:
            query = model.select(*columns(model)).order_by(pk).limit(PAGE)
            if last is not None:
                query = query.where(pk > last)
            page = list(query.tuples())
            if page:
                yield page
            if len(page) < PAGE:
                return
            last = page[-1][at]


def table_counts() -> dict[str, int]:
    return {table_name(model): model.select().count() for model in TABLES}


def wipe_tables() -> None:
    """Delete every row, children first (inside the caller's transaction)."""
    for model in reversed(TABLES):
        model.delete().execute()


def insert_rows(model: type[BaseModel], rows: list[dict[pw.Field, Any]]) -> None:
    for start in range(0, len(rows), INSERT_BATCH):
        model.insert_many(rows[start:start + INSERT_BATCH]).execute()


def reset_sequences(db: pw.Database) -> None:
    """After rows were inserted with their ids, move PostgreSQL's id sequences past them (SQLite
    picks max(id) + 1 by itself)."""
    if not isinstance(db, pw.PostgresqlDatabase):
        return
    for model in TABLES:
        pk = model._meta.primary_key
        if isinstance(pk, pw.AutoField):
            table, column = table_name(model), pk.column_name
            db.execute_sql(
                f'SELECT setval(pg_get_serial_sequence(%s, %s), '
                f'COALESCE((SELECT MAX("{column}") FROM "{table}"), 0) + 1, false)', (table, column))
