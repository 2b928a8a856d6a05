"""Parse corpus sentences back into facts, independently of the corpus writer (for tests)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Parsed:
    kind: str  # atomic | tf | not | and | or
    facts: tuple[tuple[str, str, str], ...]
    label: bool | None


class SentenceParser:
    """Splits "s r o" using the world's relation names (synthetic names contain no template words)."""

    def __init__(self, relations: list[str]) -> None:
        alt = "|".join(re.escape(r) for r in sorted(relations, key=len, reverse=True))
        self.fact = re.compile(rf"^(.+?) ({alt}) (.+)$")

    def split_fact(self, text: str) -> tuple[str, str, str]:
        m = self.fact.match(text)
        assert m, text
        return m.group(1), m.group(2), m.group(3)

    def parse(self, sentence: str) -> Parsed:
        if not sentence.startswith('"'):
            return Parsed("atomic", (self.split_fact(sentence),), None)
        body, label = sentence[1:].rsplit('" is ', 1)
        truth = {"true": True, "false": False}[label]
        if body.startswith("not "):
            return Parsed("not", (self.split_fact(body[4:]),), truth)
        for op in ("and", "or"):
            parts = body.split(f" {op} ")
            if len(parts) == 2:
                return Parsed(op, (self.split_fact(parts[0]), self.split_fact(parts[1])), truth)
        return Parsed("tf", (self.split_fact(body),), truth)
