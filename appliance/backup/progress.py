"""How the backup steps report progress; the CLI draws it with Rich, tests ignore it."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def phase(self, label: str, total: int | None, *, in_bytes: bool = False) -> None:
        """A new step begins; ``total`` items (or bytes) when known."""

    def advance(self, amount: int = 1) -> None: ...


class Silent:
    def phase(self, label: str, total: int | None, *, in_bytes: bool = False) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass
