"""``stats.json``: the paper's Table 6 figures plus the checks the tests hold the world to."""

from __future__ import annotations

from collections import Counter

import numpy as np

from editlab.world import corpus as C
from editlab.world.config import WorldConfig
from editlab.world.generative import Generative
from editlab.world.kg import KG


def world_stats(kg: KG, gen: Generative, samples: np.ndarray, sents: C.Sentences, cfg: WorldConfig,
                n_docs: int, n_tokens: int, eval_cases: list[dict], meta_cases: list[dict],
                split_subjects: dict[str, int]) -> dict:
    """Table 6 statistics (sentence counts are distinct sentences; each occurs ``resamples`` times
    in the documents) and world diagnostics."""
    by_kind = np.bincount(sents.kind, minlength=len(C.TYPE_NAMES))
    counts = {name: int(by_kind[k]) for k, name in enumerate(C.TYPE_NAMES)}
    is_down = gen.upstream_object >= 0
    modal_share = float((samples == gen.modal[:, None]).mean())
    return {
        "true_atomic_facts": kg.n_facts,
        "atomic_sentences": counts["atomic"],
        "tf_sentences": counts["tf"],
        "and_or_not_sentences": counts["and"] + counts["or"] + counts["not"],
        "sentences_by_type": counts,
        "sentences": len(sents),
        "sentence_occurrences": len(sents) * cfg.corpus.resamples,
        "documents": n_docs,
        "tokens": n_tokens,
        "subjects": len(kg.subjects),
        "relations": len(kg.relations),
        "objects": len(kg.objects),
        "kg_facts_before_selection": int(kg.meta.get("kg_facts", kg.n_facts)),
        "downstream_fact_share": float(is_down.mean()),
        "modal_sample_share": modal_share,
        "mean_p_modal": float(gen.p_modal.mean()),
        "cases": len(eval_cases),
        "meta_cases": len(meta_cases),
        "eval_split_subjects": split_subjects["eval"],
        "meta_split_subjects": split_subjects["meta"],
        "eval_case_subjects": len({c["subject"] for c in eval_cases}),
        "meta_case_subjects": len({c["subject"] for c in meta_cases}),
        "request_types": dict(sorted(Counter(c["request_type"] for c in eval_cases).items())),
        "downstream_changes": int(sum(c["downstream_changes"] for c in eval_cases)),
    }
