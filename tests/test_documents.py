"""The document store, each test run against SQLite and a real MongoDB-protocol server (nx-27017)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from appliance.stores.documents import DocumentExists, DocumentStore, SqliteDocuments, open_documents
from appliance.stores.errors import StoreUnavailable


@pytest.fixture(params=["sqlite", "mongodb"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DocumentStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'new-dir' / 'documents.db'}"
    else:
        url = request.getfixturevalue("mongo_url")
    docs = open_documents(url)
    assert docs.kind == request.param
    await docs.open()
    yield docs
    await docs.close()


def ids(docs: list[dict[str, Any]]) -> list[str]:
    return [doc["_id"] for doc in docs]


async def seed(store: DocumentStore) -> None:
    """d0..d9: n = i, kind "odd"/"even", speaker.name and speaker.lang; "dx" has neither n nor kind."""
    for i in range(10):
        await store.insert("segments", {
            "_id": f"d{i}", "n": i, "kind": "odd" if i % 2 else "even",
            "speaker": {"name": ["ann", "bob", "cy"][i % 3], "lang": "de" if i < 5 else "en"},
        })
    await store.insert("segments", {"_id": "dx", "speaker": {"name": "zed"}})


async def test_insert_and_get_round_trip(store: DocumentStore) -> None:
    doc = {"text": "Grüße, 世界", "n": 3, "f": 1.5, "ok": True, "none": None,
           "tags": ["a", "b"], "nested": {"list": [1, {"x": 2}]}}
    doc_id = await store.insert("transcripts", doc)
    assert len(doc_id) == 32 and int(doc_id, 16) >= 0
    assert "_id" not in doc, "insert must not change the caller's dict"
    assert await store.get("transcripts", doc_id) == {**doc, "_id": doc_id}

    assert await store.insert("transcripts", {"_id": "mine", "v": 1}) == "mine"
    assert await store.get("transcripts", "mine") == {"_id": "mine", "v": 1}
    assert await store.insert("other", {"_id": "mine", "v": 2}) == "mine"
    assert await store.get("other", "mine") == {"_id": "mine", "v": 2}
    assert await store.get("transcripts", "missing") is None
    with pytest.raises(ValueError, match="collection name"):
        await store.insert("bad-name", {"v": 1})
    assert await store.get("nowhere", "mine") is None


async def test_insert_refuses_duplicate_and_bad_ids(store: DocumentStore) -> None:
    await store.insert("c", {"_id": "a", "v": 1})
    with pytest.raises(DocumentExists, match="'a'"):
        await store.insert("c", {"_id": "a", "v": 2})
    assert await store.get("c", "a") == {"_id": "a", "v": 1}
    for bad in (1, "", None):
        with pytest.raises(ValueError):
            await store.insert("c", {"_id": bad})
    assert await store.count("c") == 1


@pytest.mark.parametrize(("filter", "expected"), [
    (None, ["d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8", "d9", "dx"]),
    ({"kind": "odd"}, ["d1", "d3", "d5", "d7", "d9"]),
    ({"kind": "odd", "speaker.lang": "en"}, ["d5", "d7", "d9"]),
    ({"speaker.name": "cy"}, ["d2", "d5", "d8"]),
    ({"_id": "d4"}, ["d4"]),
    ({"_id": {"$in": ["d4", "d1", "nope"]}}, ["d1", "d4"]),
    ({"n": {"$in": [2, 7]}}, ["d2", "d7"]),
    ({"n": {"$in": []}}, []),
    ({"kind": {"$in": ["even", "none"]}}, ["d0", "d2", "d4", "d6", "d8"]),
    ({"n": {"$gt": 7}}, ["d8", "d9"]),
    ({"n": {"$gte": 7}}, ["d7", "d8", "d9"]),
    ({"n": {"$lt": 2}}, ["d0", "d1"]),
    ({"n": {"$lte": 2}}, ["d0", "d1", "d2"]),
    ({"n": {"$gt": 2, "$lte": 5}}, ["d3", "d4", "d5"]),
    ({"n": {"$gte": 3}, "speaker.name": "ann"}, ["d3", "d6", "d9"]),
    ({"kind": {"$ne": "even"}}, ["d1", "d3", "d5", "d7", "d9", "dx"]),
    ({"speaker.lang": {"$ne": "de"}}, ["d5", "d6", "d7", "d8", "d9", "dx"]),
    ({"ok": True}, []),
    ({"speaker.name": {"$gt": "bob"}}, ["d2", "d5", "d8", "dx"]),
])
async def test_find_filters(store: DocumentStore, filter: dict[str, Any] | None, expected: list[str]) -> None:
    await seed(store)
    assert ids(await store.find("segments", filter)) == expected
    assert await store.count("segments", filter) == len(expected)


async def test_find_sort_limit_skip(store: DocumentStore) -> None:
    await seed(store)
    has_n = {"n": {"$gte": 0}}
    assert ids(await store.find("segments", has_n, sort=[("n", -1)])) == [f"d{i}" for i in range(9, -1, -1)]
    assert ids(await store.find("segments", has_n, sort=[("n", -1)], limit=3)) == ["d9", "d8", "d7"]
    assert ids(await store.find("segments", has_n, sort=[("n", -1)], skip=8)) == ["d1", "d0"]
    assert ids(await store.find("segments", has_n, sort=[("n", 1)], skip=2, limit=2)) == ["d2", "d3"]
    assert ids(await store.find("segments", has_n, sort=[("kind", 1), ("n", -1)])) == [
        "d8", "d6", "d4", "d2", "d0", "d9", "d7", "d5", "d3", "d1"]
    # Ties are broken by _id, so the order does not depend on the store.
    assert ids(await store.find("segments", has_n, sort=[("speaker.lang", -1)], limit=6)) == [
        "d5", "d6", "d7", "d8", "d9", "d0"]
    assert ids(await store.find("segments", sort=[("_id", -1)], limit=2)) == ["dx", "d9"]
    assert await store.find("segments", has_n, skip=20) == []


@pytest.mark.parametrize("filter", [
    {"n": {"$regex": "x"}},
    {"n": {"$exists": True}},
    {"n": {}},
    {"n": [1, 2]},
    {"speaker": {"name": "ann"}},
    {"n": {"$in": 3}},
    {"n": {"$gt": [1]}},
    {"n": None},
    {"n": {"$ne": None}},
    {"n": {"$in": [1, None]}},
    {"$or": [{"n": 1}]},
    {"bad field": 1},
    {"a..b": 1},
])
async def test_find_refuses_what_the_filter_language_lacks(store: DocumentStore, filter: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        await store.find("segments", filter)
    with pytest.raises(ValueError):
        await store.count("segments", filter)
    with pytest.raises(ValueError):
        await store.delete_many("segments", filter)


async def test_find_refuses_bad_sort(store: DocumentStore) -> None:
    with pytest.raises(ValueError, match="direction"):
        await store.find("segments", sort=[("n", 0)])
    with pytest.raises(ValueError):
        await store.find("segments", sort=[("n;drop", 1)])


async def test_update_sets_top_level_fields(store: DocumentStore) -> None:
    await store.insert("c", {"_id": "a", "keep": 1, "speaker": {"name": "ann", "lang": "de"}, "t": "x"})
    assert await store.update("c", "a", {"speaker": {"name": "bob"}, "t": None, "new": [1, "2"]}) is True
    assert await store.get("c", "a") == {
        "_id": "a", "keep": 1, "speaker": {"name": "bob"}, "t": None, "new": [1, "2"]}
    assert await store.update("c", "a", {"keep": 1}) is True, "a match counts even when nothing changes"
    assert await store.update("c", "missing", {"keep": 2}) is False
    assert await store.get("c", "missing") is None
    for bad in ({}, {"_id": "b"}, {"speaker.name": "x"}):
        with pytest.raises(ValueError):
            await store.update("c", "a", bad)
    assert (await store.get("c", "a"))["speaker"] == {"name": "bob"}


async def test_delete_and_delete_many(store: DocumentStore) -> None:
    await seed(store)
    assert await store.delete("segments", "d0") is True
    assert await store.delete("segments", "d0") is False
    assert await store.get("segments", "d0") is None
    assert await store.delete_many("segments", {"kind": "odd", "n": {"$lt": 5}}) == 2
    assert ids(await store.find("segments")) == ["d2", "d4", "d5", "d6", "d7", "d8", "d9", "dx"]
    assert await store.delete_many("segments", {"kind": "nothing"}) == 0
    assert await store.delete_many("segments", {}) == 8
    assert await store.count("segments") == 0


async def test_search_text_ignores_case(store: DocumentStore) -> None:
    lines = {
        "s1": ("Hello big World", "m1"), "s2": ("hello  BIG world?", "m2"),
        "s3": ("ÜBER die Straße (x)", "m1"), "s4": ("a.b and c*d", "m1"), "s5": ("axb", "m1"),
    }
    for doc_id, (text, meeting) in lines.items():
        await store.insert("transcripts", {"_id": doc_id, "text": text, "meeting": meeting})
    await store.insert("transcripts", {"_id": "s6", "text": 42, "meeting": "m1"})
    await store.insert("transcripts", {"_id": "s7", "meeting": "m1"})

    async def search(text: str, **kwargs: Any) -> list[str]:
        return ids(await store.search_text("transcripts", "text", text, **kwargs))

    assert await search("big world") == ["s1", "s2"]
    assert await search("HELLO") == ["s1", "s2"]
    assert await search("über") == ["s3"]
    assert await search("(X)") == ["s3"]
    assert await search("a.b") == ["s4"], "the text is matched literally, not as a pattern"
    assert await search("C*D") == ["s4"]
    assert await search("42") == [], "only string fields are searched"
    assert await search("nothing like it") == []
    assert await search("hello", filter={"meeting": "m2"}) == ["s2"]
    assert await search("e", filter={"meeting": {"$in": ["m1"]}}, limit=2) == ["s1", "s3"]
    assert await search("E", sort=[("_id", -1)]) == ["s3", "s2", "s1"]
    with pytest.raises(ValueError):
        await search("x", filter={"meeting": {"$where": "1"}})


async def test_collections_and_iter_all_stream_every_document(store: DocumentStore) -> None:
    assert await store.collections() == []
    total = 2500
    for start in range(0, total, 250):
        await asyncio.gather(*(store.insert("bulk", {"_id": f"k{i:05d}", "i": i})
                               for i in range(start, start + 250)))
    await store.insert("a_first", {"x": 1})
    assert await store.collections() == ["a_first", "bulk"]

    seen = [doc async for doc in store.iter_all("bulk")]
    assert len(seen) == total
    assert [doc["i"] for doc in seen] == list(range(total)), "iter_all yields in _id order"
    assert seen[1234] == {"_id": "k01234", "i": 1234}
    assert [doc async for doc in store.iter_all("none")] == []

    assert await store.delete_many("a_first", {}) == 1
    assert await store.collections() == ["bulk"], "an emptied collection is not listed"


async def test_ping_and_describe(store: DocumentStore) -> None:
    await store.ping()
    assert store.describe().startswith(f"{store.kind}://")


async def test_sqlite_documents_survive_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'documents.db'}"
    first = SqliteDocuments(url)
    await first.open()
    await first.insert("c", {"_id": "a", "v": [1]})
    await first.close()
    second = open_documents(url)
    await second.open()
    assert await second.get("c", "a") == {"_id": "a", "v": [1]}
    await second.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_mongodb_raises_store_unavailable_with_the_fix() -> None:
    port = closed_port()
    docs = open_documents(f"mongodb://app:s3cret-pw@127.0.0.1:{port}/confmeet")
    with pytest.raises(StoreUnavailable) as caught:
        await docs.open()
    message = str(caught.value)
    assert "MongoDB" in message and f"127.0.0.1:{port}" in message
    assert "start MongoDB" in message and "'documents' URL" in message
    assert "s3cret-pw" not in message and "app:********@" in message
    await docs.close()


async def test_unusable_sqlite_path_raises_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    docs = open_documents(f"sqlite:///{tmp_path / 'a-file' / 'documents.db'}")
    with pytest.raises(StoreUnavailable, match="writable by the confmeet user"):
        await docs.open()
    await docs.close()


def test_unknown_scheme_names_the_allowed_forms() -> None:
    with pytest.raises(StoreUnavailable, match=r"sqlite:///PATH or mongodb://"):
        open_documents("postgresql://u:pw@db/confmeet")
