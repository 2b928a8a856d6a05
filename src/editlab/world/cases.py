"""Edit cases: the benchmark built once per world (world.md section 6).

For each evaluation (s1, r1) the case holds the requested object o*, its edit weight n' and the
gold probabilities of every probe before (``p_pre``) and after (``p_post``) the agent takes the
edit. The meta-training split (editor training for MEND/MALMEN/SERAC) is built the same way from a
disjoint set of subjects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from editlab.errors import EditlabError
from editlab.vocab import prompt, sentence
from editlab.world.agent import Agent
from editlab.world.config import AgentConfig, CasesConfig
from editlab.world.generative import Generative, false_objects
from editlab.world.kg import KG
from editlab.world.logic import p_and, p_not, p_or, p_tf


@dataclass
class _World:
    kg: KG
    gen: Generative
    agent: Agent
    rels_of: list[list[int]]  # subject -> sorted relation ids
    subj_with: list[np.ndarray]  # relation -> sorted subjects having it

    def fact(self, s: int, r: int, o: int) -> str:
        return sentence(self.kg.subjects[s], self.kg.relations[r], self.kg.objects[o])


def split_subjects(n_subjects: int, meta_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle of subjects, cut into (evaluation, meta-training) splits, disjoint."""
    order = rng.permutation(n_subjects)
    n_meta = int(round(meta_fraction * n_subjects))
    return order[n_meta:], order[:n_meta]


def relations_of(kg: KG) -> list[list[int]]:
    """subject -> its relation ids, sorted (facts are sorted by (s, r))."""
    out: list[list[int]] = [[] for _ in kg.subjects]
    for s, r in zip(kg.s.tolist(), kg.r.tolist()):
        out[s].append(r)
    return out


@dataclass(frozen=True)
class Splits:
    """Subjects of each split and the (s1, r1) slots that become cases, in case order."""

    subjects: dict[str, np.ndarray]
    slots: dict[str, list[tuple[int, int]]]


def split_slots(kg: KG, cfg: CasesConfig, rng: np.random.Generator) -> Splits:
    """Draw the subject split and check each split holds enough facts for its cases.

    The build calls this right after the KG is fixed, so an impossible ``n_cases`` fails in a second
    instead of after the corpus is tokenized, and hands the result (and the same generator, which
    :func:`build_cases` keeps drawing from) to :func:`build_cases`.
    """
    rels_of = relations_of(kg)
    eval_subj, meta_subj = split_subjects(len(kg.subjects), cfg.meta_fraction, rng)
    out = {}
    for split, subjects, n, key in (("eval", eval_subj, cfg.n_cases, "n_cases"),
                                    ("meta", meta_subj, cfg.n_meta_cases, "n_meta_cases")):
        slots = [(int(s), r) for s in subjects for r in rels_of[int(s)]]
        if n > len(slots):
            raise EditlabError(
                f"data.cases.{key}={n} but the {split} split holds only {len(slots)} facts "
                f"({len(subjects)} subjects); lower it, change data.cases.meta_fraction, or grow the KG"
            )
        out[split] = slots[:n]
    return Splits({"eval": eval_subj, "meta": meta_subj}, out)


def build_cases(
    kg: KG,
    gen: Generative,
    agent: Agent,
    cfg: CasesConfig,
    acfg: AgentConfig,
    splits: Splits,
    rng: np.random.Generator,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """(evaluation cases, meta-training cases) for the slots of ``splits``; ``rng`` is the generator
    :func:`split_slots` drew the split from."""
    rels_of = relations_of(kg)
    subj_with = [np.unique(kg.s[kg.r == r]) for r in range(len(kg.relations))]
    world = _World(kg, gen, agent, rels_of, subj_with)
    out = []
    for split in ("eval", "meta"):
        cases = []
        for s1, r1 in splits.slots[split]:
            cases.append(_case(world, split, len(cases), s1, r1, cfg, acfg, rng))
            if progress and len(cases) % 50 == 0:
                progress(50)
        if progress:
            progress(len(cases) % 50)
        out.append(cases)
    return out[0], out[1]


def _false_object(world: _World, row: int, rng: np.random.Generator) -> int:
    return int(false_objects(world.gen, world.kg, np.array([row]), rng)[0])


def _weight(agent: Agent, s: int, r: int, o: int, acfg: AgentConfig) -> tuple[float, float]:
    w, p_t = agent.n_prime(s, r, o, acfg.target)
    return (float(w) if acfg.weight == "n_prime" else float(acfg.weight)), p_t


def _request(world: _World, s1: int, r1: int, cfg: CasesConfig, acfg: AgentConfig,
             rng: np.random.Generator) -> tuple[int, str]:
    """(o*, request_type) by world.md section 6 step 3."""
    agent, kg = world.agent, world.kg
    row = agent.row(s1, r1)
    o_true = int(world.gen.modal[row])
    false = _false_object(world, row, rng)
    r_d = kg.downstream.get(r1)
    if r_d is not None and agent.row(s1, r_d) >= 0:
        if rng.random() < cfg.p_downstream_try:
            before = agent.argmax(s1, r_d)
            cand = agent.support[r1][agent.support[r1] != o_true]
            for o in rng.permutation(cand)[: cfg.max_candidates].tolist():
                w, _ = _weight(agent, s1, r1, o, acfg)
                if agent.edit(s1, r1, o, w).argmax(s1, r_d) != before:
                    return int(o), "downstream_change"
        return (false, "contradict") if false >= 0 else (o_true, "reinforce")
    if rng.random() < cfg.p_reinforce or false < 0:
        return o_true, "reinforce"
    return false, "contradict"


def _atomic(world: _World, edited: Agent, kind: str, s: int, r: int, o_req: int | None) -> list[dict]:
    """Probe records of one atomic probe: original modal object, o* (s1 r1 only), new argmax."""
    agent = world.agent
    direct_post = kind == "s1r1"  # the edit is direct evidence on this very fact
    post = edited.direct(s, r) if direct_post else edited.answer(s, r)
    pre = agent.answer(s, r)
    targets = [("original", int(world.gen.modal[agent.row(s, r)]))]
    if o_req is not None:
        targets.append(("requested", o_req))
    targets.append(("new_argmax", int(agent.support[r][int(np.argmax(post))])))
    rule = agent.rule(s, r)
    return [
        {
            "kind": kind,
            "prompt": prompt(world.kg.subjects[s], world.kg.relations[r]),
            "object": world.kg.objects[o],
            "subject": world.kg.subjects[s],
            "relation": world.kg.relations[r],
            "target": target,
            "gold_rule": rule,
            "gold_rule_post": "direct" if direct_post else rule,
            "p_pre": float(pre[agent.local(r, o)]),
            "p_post": float(post[agent.local(r, o)]),
        }
        for target, o in targets
    ]


def _s2(world: _World, s1: int, r1: int, r2: int, rng: np.random.Generator) -> tuple[int, int]:
    """A subject (not s1) with evidence on both r1 and r2; else one with r1 and another with r2."""
    both = np.intersect1d(world.subj_with[r1], world.subj_with[r2])
    both = both[both != s1]
    if len(both):
        s2 = int(rng.choice(both))
        return s2, s2
    c1 = world.subj_with[r1][world.subj_with[r1] != s1]
    c2 = world.subj_with[r2][world.subj_with[r2] != s1]
    if not len(c1) or not len(c2):
        raise EditlabError(f"no other subject has relation '{world.kg.relations[r1]}' or "
                           f"'{world.kg.relations[r2]}': the world is too small for edit cases")
    return int(rng.choice(c1)), int(rng.choice(c2))


def _case(world: _World, split: str, idx: int, s1: int, r1: int, cfg: CasesConfig, acfg: AgentConfig,
          rng: np.random.Generator) -> dict:
    kg, agent, gen = world.kg, world.agent, world.gen
    row = agent.row(s1, r1)
    o_true = int(gen.modal[row])
    o_req, rtype = _request(world, s1, r1, cfg, acfg, rng)
    w, p_t = _weight(agent, s1, r1, o_req, acfg)
    edited = agent.edit(s1, r1, o_req, w)

    r_d = kg.downstream.get(r1)
    if r_d is not None and agent.row(s1, r_d) >= 0:
        r2 = r_d
    else:
        others = [r for r in world.rels_of[s1] if r != r1]
        if not others:
            raise EditlabError(f"subject '{kg.subjects[s1]}' has a single relation; every subject needs >= 2")
        r2 = int(others[int(rng.integers(len(others)))])
    s2a, s2b = _s2(world, s1, r1, r2, rng)

    probes = _atomic(world, edited, "s1r1", s1, r1, o_req)
    probes += _atomic(world, edited, "s1r2", s1, r2, None)
    probes += _atomic(world, edited, "s2r1", s2a, r1, None)
    probes += _atomic(world, edited, "s2r2", s2b, r2, None)
    probes += _logical(world, edited, s1, r1, row, rng)
    return {
        "case_id": f"{split}-{idx:06d}",
        "split": split,
        "subject": kg.subjects[s1],
        "relation": kg.relations[r1],
        "o_true": kg.objects[o_true],
        "requested_object": kg.objects[o_req],
        "request_type": rtype,
        "edit_weight": w,
        "p_target": p_t,
        "downstream_changes": bool(edited.argmax(s1, r2) != agent.argmax(s1, r2)),
        "s2_split": s2a != s2b,
        "ids": {"subject": s1, "relation": r1, "requested_object": o_req, "o_true": o_true,
                "relation2": r2, "s2": s2a, "s2_r2": s2b},
        "probes": probes,
    }


def _logical(world: _World, edited: Agent, s1: int, r1: int, row: int, rng: np.random.Generator) -> list[dict]:
    """Logical probes on A = (s1, r1, o_A) and B = a fact of another subject (section 6 step 5)."""
    kg, agent, gen = world.kg, world.agent, world.gen
    o_true = int(gen.modal[row])
    o_fa = _false_object(world, row, rng)
    o_a = o_true if (rng.random() < 0.5 or o_fa < 0) else o_fa
    other = np.flatnonzero(kg.s != s1)
    rb = int(rng.choice(other))
    sb, r_b = int(kg.s[rb]), int(kg.r[rb])
    o_fb = _false_object(world, rb, rng)
    o_b = int(gen.modal[rb]) if (rng.random() < 0.5 or o_fb < 0) else o_fb

    pa = (agent.answer(s1, r1)[agent.local(r1, o_a)], edited.direct(s1, r1)[agent.local(r1, o_a)])
    pb = (agent.answer(sb, r_b)[agent.local(r_b, o_b)], edited.answer(sb, r_b)[agent.local(r_b, o_b)])
    text_a, text_b = world.fact(s1, r1, o_a), world.fact(sb, r_b, o_b)
    fa = [kg.subjects[s1], kg.relations[r1], kg.objects[o_a]]
    fb = [kg.subjects[sb], kg.relations[r_b], kg.objects[o_b]]
    same = False  # B is always a fact of another subject here
    specs = (
        ("tf_A", f'"{text_a}" is', [fa], lambda a, b: p_tf(a)),
        ("not_A", f'"not {text_a}" is', [fa], lambda a, b: p_not(a)),
        ("and_AB", f'"{text_a} and {text_b}" is', [fa, fb], lambda a, b: p_and(a, b, same)),
        ("and_BA", f'"{text_b} and {text_a}" is', [fb, fa], lambda a, b: p_and(b, a, same)),
        ("or_BA", f'"{text_b} or {text_a}" is', [fb, fa], lambda a, b: p_or(b, a, same)),
        ("tf_B", f'"{text_b}" is', [fb], lambda a, b: p_tf(b)),
    )
    out = [
        {"kind": kind, "prompt": text, "label": "true", "facts": facts,
         "p_pre": float(f(pa[0], pb[0])), "p_post": float(f(pa[1], pb[1]))}
        for kind, text, facts, f in specs
    ]
    out.append({"kind": "atomic_A", "prompt": prompt(kg.subjects[s1], kg.relations[r1]), "object": kg.objects[o_a],
                "facts": [fa], "p_pre": float(pa[0]), "p_post": float(pa[1])})
    return out
