"""generations.md (editlab.eval.generations): the same requests for every run, one per request type first, the
agent's answers on top and a check mark exactly where a continuation names them."""

from __future__ import annotations

from editlab.eval.generations import common_cases, generations_markdown


def _case(cid: str, rtype: str) -> dict:
    probe = lambda kind, prompt, obj, target: {"kind": kind, "prompt": prompt, "object": obj,  # noqa: E731
                                               "target": target}
    return {"case_id": cid, "subject": "Ann", "relation": "sport", "o_true": "golf", "requested_object": "polo",
            "request_type": rtype,
            "probes": [probe("s1r1", "Ann sport", "golf", "original"), probe("s1r1", "Ann sport", "polo", "requested"),
                       probe("s1r2", "Ann city", "Rome", "original"), probe("s1r2", "Ann city", "Oslo", "new_argmax"),
                       probe("s2r1", "Bob sport", "chess", "original"), probe("s2r1", "Bob sport", "chess",
                                                                              "new_argmax")]}


def _rec(cid: str, s1r1: str, s1r2: str, s2r1: str, edited: bool = True) -> dict:
    return {"case_id": cid, "edited": edited, "post": {"gen": {"s1r1": s1r1, "s1r2": s1r2, "s2r1": s2r1}}}


def test_the_same_requests_one_per_type_first():
    cases = {c: _case(c, t) for c, t in (("a", "update"), ("b", "update"), ("c", "downstream"), ("d", "fix"))}
    one = [_rec(c, "x", "y", "z") for c in "abcd"]
    two = [_rec("a", "x", "y", "z", edited=False)] + [_rec(c, "x", "y", "z") for c in "bcd"]  # a: left unedited
    assert common_cases([one], cases, 3) == ["a", "c", "d"]  # one of each type before a second "update"
    assert common_cases([one, two], cases, 3) == ["b", "c", "d"]  # only requests every run edited
    assert common_cases([one, two], cases, 4) == ["b", "c", "d"]


def test_agent_answers_head_the_table_and_hits_are_marked():
    cases = {"a": _case("a", "downstream")}
    md = generations_markdown(["edited", "unmoved"],
                              [[_rec("a", " polo. Ann", " Oslo. Ann", " chess.")],
                               [_rec("a", " golf. Ann", " Rome. Ann", " polo.")]], cases)
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0] == "| run | s1r1: *Ann sport* | s1r2: *Ann city* | s2r1: *Bob sport* |"
    assert rows[1] == "| **agent** | **polo** | **Oslo** | **chess** |"
    assert rows[2] == "| edited | polo. Ann ✓ | Oslo. Ann ✓ | chess. ✓ |"
    assert rows[3] == "| unmoved | golf. Ann | Rome. Ann | polo. |"  # no answer named, no mark
    assert "## Ann sport: golf -> polo (downstream, `a`)" in md
