"""The stores' URLs, read in one place: the stores themselves, ``confmeet status`` and the
upgrade's database set-aside all take what a URL says from here, so they cannot disagree.

``sqlite:///PATH`` and ``file:///PATH`` name a file or folder (percent-decoded);
``postgresql://USER:PASSWORD@HOST:PORT/DATABASE?OPTION=VALUE`` a PostgreSQL database (host
127.0.0.1, port 5432 and database ``confmeet`` unless given; options go to libpq as they are);
``s3://ACCESS:SECRET@HOST:PORT/BUCKET[/PREFIX]?secure=false&region=us-east-1`` an S3 bucket, with
the access key and secret URL-quoted. Redis and MongoDB URLs are read by their own client
libraries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

YES = ("1", "true", "yes", "on")


def scheme(url: str) -> str:
    return urlsplit(url).scheme


def local_path(url: str) -> Path:
    """The file (``sqlite:``) or folder (``file:``) a URL names."""
    return Path(unquote(urlsplit(url).path))


@dataclass(frozen=True)
class PostgresUrl:
    database: str
    user: str | None
    password: str | None
    host: str
    port: int
    connect_timeout: int
    options: dict[str, str] = field(default_factory=dict)  # sslmode=..., application_name=...


def parse_postgres(url: str) -> PostgresUrl:
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    return PostgresUrl(
        database=unquote(parts.path.lstrip("/")) or "confmeet",
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        connect_timeout=int(options.pop("connect_timeout", 5)),
        options=options,
    )


@dataclass(frozen=True)
class S3Url:
    host: str  # HOST:PORT, as the minio client takes it
    access_key: str
    secret_key: str
    bucket: str
    prefix: str  # "" or "PREFIX/": every key of the store lies under it
    secure: bool  # HTTPS: secure=1, true, yes or on
    region: str

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}"


def parse_s3(url: str) -> S3Url:
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    bucket, _, prefix = parts.path.lstrip("/").partition("/")
    return S3Url(
        host=parts.netloc.rpartition("@")[2],
        access_key=unquote(parts.username or ""),
        secret_key=unquote(parts.password or ""),
        bucket=bucket,
        prefix=f"{prefix.strip('/')}/" if prefix.strip("/") else "",
        secure=options.get("secure", "false").lower() in YES,
        region=options.get("region", "us-east-1"),
    )
