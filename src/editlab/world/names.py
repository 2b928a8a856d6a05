"""Pronounceable synthetic names, deterministic from a seeded generator.

Constraints from world.md section 1: names are unique, no word of a name is a template word
(``is``, ``true``, ``false``, ``not``, ``and``, ``or``), and within a group (the objects of one type)
no name is a substring of another, case-insensitively. The last rule matters because the paper's
substring accuracy protocol (lower-cased) would count "port vamo" as a hit inside "port vamora".
"""

from __future__ import annotations

import numpy as np

from editlab.world.kg import TEMPLATE_WORDS

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "kl", "sh")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s", "k")


def words(rng: np.random.Generator, n: int, min_syll: int = 2, max_syll: int = 3) -> list[str]:
    """``n`` capitalised pseudo-words of ``min_syll``..``max_syll`` syllables (may repeat)."""
    n_syll = rng.integers(min_syll, max_syll + 1, size=n)
    total = int(n_syll.sum())
    on = rng.integers(0, len(_ONSETS), size=total)
    vo = rng.integers(0, len(_VOWELS), size=total)
    co = rng.integers(0, len(_CODAS), size=total)
    sylls = [_ONSETS[a] + _VOWELS[b] + _CODAS[c] for a, b, c in zip(on.tolist(), vo.tolist(), co.tolist())]
    out, i = [], 0
    for k in n_syll.tolist():
        out.append("".join(sylls[i : i + k]).capitalize())
        i += k
    return out


def drop_substrings(names: list[str]) -> list[str]:
    """Remove every name that occurs (lower-cased) inside another name of the list; keep order.

    One joined string and ``str.count`` make this O(n * total length) in C instead of an O(n^2)
    Python double loop; a name occurring more than once in the joined text is inside another one
    (names contain no newline, so no match spans two names).
    """
    low = [x.lower() for x in names]
    joined = "\n".join(low)
    return [x for x, lx in zip(names, low) if joined.count(lx) == 1]


def unique_names(
    rng: np.random.Generator,
    n: int,
    make: callable,
    taken: set[str],
    substring_free: bool,
) -> list[str]:
    """Draw ``n`` distinct names from ``make(rng, k) -> list[str]``, avoiding ``taken`` (updated).

    Draws in rounds with 30% headroom until enough names pass the rules; acceptance follows draw
    order only, so the result is deterministic for a given generator state.
    """
    accepted: list[str] = []
    while len(accepted) < n:
        need = n - len(accepted)
        seen = set(accepted)
        for cand in make(rng, int(need * 1.3) + 8):
            if cand in taken or cand in seen or TEMPLATE_WORDS & set(cand.lower().split()):
                continue
            seen.add(cand)
            accepted.append(cand)
        if substring_free:
            accepted = drop_substrings(accepted)
        accepted = accepted[:n]
    taken.update(accepted)
    return accepted


def person_names(rng: np.random.Generator, k: int) -> list[str]:
    """Subjects: "Given Family"."""
    first, last = words(rng, k, 2, 3), words(rng, k, 2, 3)
    return [f"{a} {b}" for a, b in zip(first, last)]


def typed_maker(patterns: tuple[str, ...]) -> callable:
    """A maker for objects of one type: a pseudo-word inserted into one of the type's patterns."""

    def make(rng: np.random.Generator, k: int) -> list[str]:
        stems = words(rng, k, 2, 3)
        pick = rng.integers(0, len(patterns), size=k).tolist()
        return [patterns[p].format(stem) for p, stem in zip(pick, stems)]

    return make
