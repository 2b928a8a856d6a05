"""A hand-checkable toy world for agent tests.

Relations: 0 = "educated at" (upstream), 1 = "occupation" (downstream of 0).
support(0) = objects {0: X, 1: Y} (K = 2); support(1) = objects {2: P, 3: Q, 4: R} (K = 3).
Subjects 0 and 1 have both relations; subject 2 has only relation 0.
Fact rows (sorted by (s, r)): 0 = (0, 0), 1 = (0, 1), 2 = (1, 0), 3 = (1, 1), 4 = (2, 0).
"""

from __future__ import annotations

import numpy as np

from editlab.world.agent import Agent, fit_agent
from editlab.world.corpus import Sentences
from editlab.world.evidence import evidence_counts, evidence_items

FACT_S = np.array([0, 0, 1, 1, 2])
FACT_R = np.array([0, 1, 0, 1, 0])
SUPPORT = (np.array([0, 1]), np.array([2, 3, 4]))
UPSTREAM = {1: 0}
X, Y, P, Q, R = 0, 1, 2, 3, 4


def sentences(rows: list[tuple]) -> Sentences:
    """rows: (kind, fact_a, obj_a, fact_b, obj_b, label)."""
    a = np.array(rows, dtype=np.int64).reshape(-1, 6)
    return Sentences(kind=a[:, 0].astype(np.int8), fact_a=a[:, 1], obj_a=a[:, 2], fact_b=a[:, 3], obj_b=a[:, 4],
                     label=a[:, 5].astype(np.int8), owner=FACT_S[a[:, 1]])


def toy_agent(rows: list[tuple], repeat: int = 1, weighting: str = "posterior") -> Agent:
    items = evidence_items(sentences(rows))
    U, D = evidence_counts(*items, FACT_R, SUPPORT, repeat)
    return fit_agent(FACT_S, FACT_R, SUPPORT, U, D, UPSTREAM, weighting)
