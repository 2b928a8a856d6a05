"""Which facts the analyses trace: seeded draws of the world's facts, and the world's dependency groups.

A fact's object is its **modal** object (``facts.jsonl``: the object the corpus states most often, what a
model trained on it should answer; world.md section 2). ROME traces only facts the model knows (its
"known" set): a fact whose answer the clean model does not produce has nothing to localise. Here a fact
is *known* when the clean model's greedy next token is the object's first token.

A **dependency group** (the survey's Figure 8, KLoB's consistency / relevance, made exact by the world):
a fact ``s1 r1`` whose relation is the upstream of a relation ``r2`` (world.md section 1, e.g. educated
at -> occupation), the fact ``s1 r2`` that depends on it, an unrelated fact ``s1 r3`` of the same subject
(``r3`` neither ``r1`` nor ``r2``), and the fact ``s2 r1`` of another subject on the same relation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editlab.analysis.tracing import Fact, fact_inputs
from editlab.errors import EditlabError
from editlab.world.loading import World

ROLES: tuple[str, ...] = ("dependent", "same_subject", "other_subject")
"""The facts a group's fact is compared with: s1 r2 (depends on s1 r1), s1 r3 (unrelated), s2 r1."""


def world_facts(world: World) -> list[Fact]:
    """Every fact of the world with its modal object, in the world's order (sorted by subject, relation)."""
    return [Fact(f["subject"], f["relation"], f["modal"]) for f in world.facts]


@torch.no_grad()
def is_known(model: nn.Module, tok: PreTrainedTokenizerBase, fact: Fact) -> bool:
    """The clean model's greedy next token after ``"s r"`` is the object's first token."""
    ids, _, target = fact_inputs(tok, fact)
    x = torch.tensor([ids], device=next(model.parameters()).device)
    return int(model(input_ids=x).logits[0, -1].argmax()) == target


def _shuffled(n: int, seed: int) -> Iterator[int]:
    yield from np.random.default_rng(seed).permutation(n).tolist()


def draw_facts(model: nn.Module, tok: PreTrainedTokenizerBase, facts: Sequence[Fact], n: int, seed: int,
               known_only: bool) -> tuple[list[Fact], int]:
    """``n`` facts in a seeded random order (only known ones if ``known_only``); returns them and how many
    drawn facts were skipped as unknown. Fewer than ``n`` available is one error saying how many there are."""
    out, skipped = [], 0
    for i in _shuffled(len(facts), seed):
        if len(out) == n:
            break
        if known_only and not is_known(model, tok, facts[i]):
            skipped += 1
            continue
        out.append(facts[i])
    if len(out) < n:
        what = "known facts (the clean model answers them)" if known_only else "facts"
        raise EditlabError(f"the world has only {len(out)} {what}, {n} asked; lower n_facts"
                           + (" or set known_only=false" if known_only else ""))
    return out, skipped


@dataclass(frozen=True)
class Group:
    """A fact ``s1 r1`` and the three facts it is compared with (see the module docstring)."""

    fact: Fact
    dependent: Fact
    same_subject: Fact
    other_subject: Fact

    def members(self) -> tuple[Fact, ...]:
        return (self.fact, self.dependent, self.same_subject, self.other_subject)


def dependency_groups(world: World, seed: int) -> list[Group]:
    """Every group the world holds, in a seeded random order (one per subject and upstream relation it
    completes; ``r3`` and ``s2`` drawn with the same seed)."""
    rng = np.random.default_rng(seed)
    downstream = {r["name"]: r["downstream"] for r in world.info["relations"] if r.get("downstream")}
    by_subject: dict[str, dict[str, str]] = {}
    by_relation: dict[str, list[str]] = {}
    for f in world.facts:
        by_subject.setdefault(f["subject"], {})[f["relation"]] = f["modal"]
        by_relation.setdefault(f["relation"], []).append(f["subject"])
    groups = []
    for s1, rel in by_subject.items():
        for r1, r2 in downstream.items():
            others = sorted(set(rel) - {r1, r2})
            if r1 not in rel or r2 not in rel or not others:
                continue
            r3 = others[int(rng.integers(len(others)))]
            s2s = [s for s in by_relation[r1] if s != s1]
            s2 = s2s[int(rng.integers(len(s2s)))]
            groups.append(Group(Fact(s1, r1, rel[r1]), Fact(s1, r2, rel[r2]), Fact(s1, r3, rel[r3]),
                                Fact(s2, r1, by_subject[s2][r1])))
    return [groups[i] for i in rng.permutation(len(groups)).tolist()]


def draw_groups(model: nn.Module, tok: PreTrainedTokenizerBase, world: World, n: int, seed: int,
                known_only: bool) -> tuple[list[Group], int]:
    """``n`` dependency groups (all four facts known if ``known_only``); returns them and the number skipped."""
    out, skipped = [], 0
    for g in dependency_groups(world, seed):
        if len(out) == n:
            break
        if known_only and not all(is_known(model, tok, f) for f in g.members()):
            skipped += 1
            continue
        out.append(g)
    if len(out) < n:
        raise EditlabError(f"the world has only {len(out)} dependency groups"
                           + (" whose four facts the model knows" if known_only else "")
                           + f", {n} asked; lower n_groups" + (" or set known_only=false" if known_only else ""))
    return out, skipped


def case_fact(case: dict) -> Fact:
    """The true fact ``s1 r1 o_true`` an edit case rewrites (o_true: the modal object of s1 r1)."""
    return Fact(case["subject"], case["relation"], case["o_true"])


def counterfactual_cases(model: nn.Module, tok: PreTrainedTokenizerBase, world: World, n: int,
                         known_only: bool) -> list[dict]:
    """The first ``n`` evaluation cases (the world's seeded order) whose request changes the answer
    (``requested_object != o_true``), and whose true fact the model knows if ``known_only``."""
    out = []
    for case in world.cases("eval"):
        if len(out) == n:
            break
        if case["requested_object"] == case["o_true"]:
            continue
        if known_only and not is_known(model, tok, case_fact(case)):
            continue
        out.append(case)
    if len(out) < n:
        raise EditlabError(f"the world has only {len(out)} counterfactual edit cases"
                           + (" on facts the model knows" if known_only else "") + f", {n} asked; lower n_edits"
                           + (" or set known_only=false" if known_only else ""))
    return out
