"""Passphrase encryption of a byte stream, chunk by chunk, so neither side ever holds it whole.

Layout: a header (``MAGIC``, a random 16-byte salt, the scrypt cost as log2(n), r and p, and a
random 7-byte nonce prefix), then the sealed chunks. Each chunk is ``CHUNK`` bytes of plaintext
(the last one fewer, possibly none) sealed with AES-256-GCM into ciphertext plus a 16-byte tag.
The key is scrypt(passphrase, salt). Chunk i's nonce is the prefix, i as 4 big-endian bytes, and
one byte that is 1 for the last chunk, else 0 (the STREAM construction); the header is every
chunk's associated data. Changing, reordering, dropping or appending chunks, cutting the stream
short, or changing the header all make a chunk fail to open.
"""

from __future__ import annotations

import io
import os
import struct
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"CMBKENC1"
HEADER = struct.Struct(">8s16sBBB7s")
CHUNK = 256 * 1024
TAG = 16
SEALED = CHUNK + TAG
SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P = 15, 8, 1  # 32 MiB of memory, ~0.1 s per derivation
MAX_CHUNK_INDEX = 2**32 - 1


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


class DecryptionFailed(Exception):
    """The passphrase is wrong, or the encrypted bytes were changed or cut short."""


def is_encrypted(head: bytes) -> bool:
    """Whether bytes that start a stream are this module's header."""
    return head.startswith(MAGIC)


def _key(passphrase: bytes, salt: bytes, log_n: int, r: int, p: int) -> AESGCM:
    if not 10 <= log_n <= 22 or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise DecryptionFailed("the encryption header names scrypt costs confmeet never writes")
    return AESGCM(Scrypt(salt=salt, length=32, n=2**log_n, r=r, p=p).derive(passphrase))


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index > MAX_CHUNK_INDEX:
        raise OverflowError("stream too long for one encryption header")
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def read_exact(source: Readable, size: int) -> bytes:
    """``size`` bytes, fewer only at the end of the source."""
    parts: list[bytes] = []
    while size > 0:
        part = source.read(size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


class EncryptingWriter:
    """Writes the encrypted form of what is written to it into ``out``; ``close()`` seals the end
    (it does not close ``out``)."""

    def __init__(self, out: Writable, passphrase: bytes) -> None:
        salt, prefix = os.urandom(16), os.urandom(7)
        self._header = HEADER.pack(MAGIC, salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, prefix)
        self._aead = _key(passphrase, salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)
        self._prefix = prefix
        self._out = out
        self._buffer = bytearray()
        self._index = 0
        out.write(self._header)

    def _seal(self, plain: bytes | memoryview, last: bool) -> None:
        nonce = _nonce(self._prefix, self._index, last)
        self._out.write(self._aead.encrypt(nonce, bytes(plain), self._header))
        self._index += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buffer += data
        if len(self._buffer) > CHUNK:  # seal only chunks that more bytes follow: the last is special
            view = memoryview(self._buffer)
            done = 0
            while len(self._buffer) - done > CHUNK:
                self._seal(view[done:done + CHUNK], last=False)
                done += CHUNK
            view.release()
            del self._buffer[:done]
        return len(data)

    def close(self) -> None:
        self._seal(self._buffer, last=True)
        self._buffer.clear()


class DecryptingReader:
    """Reads the plaintext of an encrypted stream; raises DecryptionFailed as soon as a chunk does
    not open (wrong passphrase, changed or missing bytes)."""

    def __init__(self, source: Readable, passphrase: bytes) -> None:
        header = read_exact(source, HEADER.size)
        if len(header) < HEADER.size or not is_encrypted(header):
            raise DecryptionFailed("the encryption header is missing or cut short")
        _, salt, log_n, r, p, prefix = HEADER.unpack(header)
        self._aead = _key(passphrase, salt, log_n, r, p)
        self._header = header
        self._prefix = prefix
        self._source = source
        self._index = 0
        self._ahead: bytes | None = None
        self._plain = b""
        self._offset = 0
        self._done = False

    def _open_next(self) -> None:
        sealed = self._ahead if self._ahead is not None else read_exact(self._source, SEALED)
        ahead = read_exact(self._source, SEALED) if len(sealed) == SEALED else b""
        last = not ahead
        try:
            self._plain = self._aead.decrypt(_nonce(self._prefix, self._index, last), sealed, self._header)
        except InvalidTag:
            if self._index == 0:
                raise DecryptionFailed("the passphrase is wrong, or the encrypted bytes are damaged") from None
            raise DecryptionFailed(
                f"encrypted chunk {self._index} does not open: the bytes were changed or cut short") from None
        self._offset = 0
        self._ahead = ahead
        self._index += 1
        self._done = last

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size if size >= 0 else float("inf")
        while wanted > 0:
            if self._offset >= len(self._plain):
                if self._done:
                    break
                self._open_next()
                continue
            take = int(min(wanted, len(self._plain) - self._offset))
            parts.append(self._plain[self._offset:self._offset + take])
            self._offset += take
            wanted -= take
        return b"".join(parts)


def encrypt_bytes(data: bytes, passphrase: bytes) -> bytes:
    """The encrypted form of a small byte string (a secrets file)."""
    sink = io.BytesIO()
    writer = EncryptingWriter(sink, passphrase)
    writer.write(data)
    writer.close()
    return sink.getvalue()


def decrypt_bytes(data: bytes, passphrase: bytes) -> bytes:
    return DecryptingReader(io.BytesIO(data), passphrase).read()
