"""CounterFact's reference texts for generation consistency: ROME's TF-IDF statistics and attribute snippets.

ROME scores a CounterFact edit's generations against Wikipedia text about subjects that truly have the new target
(Meng et al., 2022, section 4.2, "Reference Score"; ``experiments/py/eval_utils_counterfact.py``). The files are
ROME's ``data/`` downloads, read from one folder (``data.references=<dir>``; nothing is downloaded here):

- ``attribute_snippets.json``: ``[{"name", "relation_id", "target_id", "samples": [{"text": ...}, ...]}, ...]``
  (``dsets/attr_snippets.py``), grouped by (relation id, target id);
- ``idf.npy`` and ``tfidf_vocab.json``: the inverse document frequencies and the word -> column vocabulary of the
  TF-IDF vectoriser fitted on Wikipedia (``dsets/tfidf_stats.py``).

:func:`ReferenceTexts.consistency` is ROME's ``tfidf_similarity``: the cosine of the TF-IDF vectors of the joined
generations and of the joined reference texts, with scikit-learn's default ``TfidfVectorizer.transform`` written
out (lower-cased, words of two or more word characters, raw counts times idf, L2-normalised).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from editlab.errors import EditlabError

FILES = ("attribute_snippets.json", "idf.npy", "tfidf_vocab.json")
TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern


@dataclass(frozen=True)
class ReferenceTexts:
    """The snippets by (relation id, target id) and the TF-IDF vectoriser's vocabulary and idf."""

    snippets: dict[str, dict[str, list[str]]]
    vocab: dict[str, int]
    idf: np.ndarray

    @staticmethod
    def load(directory: Path) -> ReferenceTexts:
        """ROME's three files from ``directory``; a missing or malformed one is one line naming it."""
        directory = Path(directory)
        missing = [f for f in FILES if not (directory / f).is_file()]
        if missing:
            raise EditlabError(f"data.references={directory} lacks {', '.join(missing)}; it needs ROME's "
                               f"{', '.join(FILES)} (docs/benchmarks.md)")
        try:
            raw = json.loads((directory / FILES[0]).read_text())
            vocab = json.loads((directory / FILES[2]).read_text())
            idf = np.load(directory / FILES[1], allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise EditlabError(f"cannot read the reference files in {directory}: {str(exc).splitlines()[0]}") from None
        snippets: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        try:
            for el in raw:
                snippets[str(el["relation_id"])][str(el["target_id"])] += [s["text"] for s in el["samples"]]
        except (KeyError, TypeError):
            raise EditlabError(f"{directory / FILES[0]} is not ROME's attribute snippets ([{{relation_id, target_id, "
                               "samples: [{text}]}}, ...])") from None
        if idf.ndim != 1 or len(idf) <= max(vocab.values(), default=-1):
            raise EditlabError(f"{directory / FILES[1]} has {idf.shape} idf values for {len(vocab)} vocabulary words")
        return ReferenceTexts({k: dict(v) for k, v in snippets.items()}, vocab, idf)

    def vector(self, text: str) -> np.ndarray:
        """The L2-normalised TF-IDF vector of ``text`` (zeros when no word is in the vocabulary)."""
        counts = Counter(self.vocab[w] for w in TOKEN.findall(text.lower()) if w in self.vocab)
        vec = np.zeros(len(self.idf))
        for col, n in counts.items():
            vec[col] = n * self.idf[col]
        norm = np.linalg.norm(vec)
        return vec / norm if norm > 0 else vec

    def consistency(self, generations: list[str], relation_id: str, target_id: str) -> float | None:
        """ROME's reference score: cosine of the TF-IDF vectors of the joined generations and of the snippets about
        ``target_id`` for ``relation_id``; None where there are no snippets or no vocabulary word in either."""
        refs = self.snippets.get(relation_id, {}).get(str(target_id), [])
        if not refs:
            return None
        a, b = self.vector(" ".join(generations)), self.vector(" ".join(refs))
        if not a.any() or not b.any():
            return None
        value = float(a @ b)
        return value if math.isfinite(value) else None
