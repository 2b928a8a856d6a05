"""Editing any Hugging Face causal LM with its own tokenizer on CounterFact / zsRE / KnowEdit files (``model=hf``,
``data=<benchmark>``): framing per tokenizer, the subject inside a benchmark prompt, the same edit as the world's
path where the two meet, and edit.py end to end on config-built GPT-2 and Llama models (single, batch, sequential)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from editlab.benchmarks import read_benchmark
from editlab.editing import registry
from editlab.editing.base import EditContext, EditRequest
from editlab.editing.locate.rows import subject_ids
from editlab.errors import EditlabError
from editlab.lm.checkpoint import copy_tokenizer
from editlab.lm.hf import load_hf_for_editing
from editlab.runs.benchmark_edit import BenchmarkData, BenchmarkRun, benchmark_run
from editlab.runs.config import EditsConfig
from editlab.vocab import lead_ids, prompt_ids, subject_span, use_own_framing
from tests.benchmarks.hf_models import SENTENCES, make_model, write_records, write_text, write_zsre_train
from tests.benchmarks.test_formats import COUNTERFACT, KNOWEDIT, ZSRE
from tests.editing.fixture_hparams import fixture_hparams

ROOT = Path(__file__).resolve().parents[2]
HF_METHODS = ("lora", "adalora", "ft_l", "ft_m", "rome", "memit", "alphaedit", "grace", "ice")
LOCATE = {"stats_tokens": 500, "prefixes": [[5, 2]]}
SMALL = {"lora": {"steps": 10}, "adalora": {"steps": 25}, "ft_l": {"steps": 5}, "ft_m": {"steps": 40},
         "grace": {"steps": 40}, "rome": LOCATE, "memit": LOCATE, "alphaedit": LOCATE}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    out = {kind: make_model(root / kind, kind, vocab_size=700) for kind in ("gpt2", "llama")}
    out["text"] = write_text(root / "text.jsonl")
    out["counterfact"] = write_records(root / "counterfact.json", COUNTERFACT, 4)
    out["zsre"] = write_records(root / "zsre.json", ZSRE, 4)
    out["knowedit"] = write_records(root / "knowedit.json", KNOWEDIT[:2], 2)
    out["zsre_train"] = write_zsre_train(root / "zsre_train.json")
    return out


def test_prompts_are_framed_as_each_tokenizer_frames_them(hf_dirs, tiny_lm, tmp_path):
    gpt2 = load_hf_for_editing(str(hf_dirs["gpt2"])).tokenizer
    llama = load_hf_for_editing(str(hf_dirs["llama"])).tokenizer
    text = "The mother tongue of Danielle Darrieux is"
    assert lead_ids(gpt2) == [] and prompt_ids(gpt2, [text])[0] == gpt2(text)["input_ids"]  # GPT-2: no BOS of its own
    assert gpt2.pad_token_id == gpt2.eos_token_id  # none of its own: EOS pads (always masked)
    assert lead_ids(llama) == [llama.bos_token_id] and prompt_ids(llama, [text])[0] == llama(text)["input_ids"]
    # the world's tokenizer adds nothing itself and editlab puts BOS first; an exported checkpoint's tokenizer,
    # framed its own way, gives exactly the same ids
    assert lead_ids(tiny_lm.tok) == [tiny_lm.tok.bos_token_id]
    copy_tokenizer(tiny_lm.world.dir, tmp_path)
    exported = use_own_framing(AutoTokenizer.from_pretrained(str(tmp_path)))
    prompts = [f"{c['subject']} {c['relation']}" for c in tiny_lm.world.cases[:5]]
    assert prompt_ids(exported, prompts) == prompt_ids(tiny_lm.tok, prompts)


def test_the_subject_span_is_found_inside_a_benchmark_prompt(hf_dirs):
    for kind in ("gpt2", "llama"):
        tok = load_hf_for_editing(str(hf_dirs[kind])).tokenizer
        text = "The mother tongue of Danielle Darrieux is"
        ids, (a, b) = subject_span(tok, "Danielle Darrieux", "P103", "", text)
        assert ids == tok(text)["input_ids"] and tok.decode(ids[a:b]).strip() == "Danielle Darrieux"
        ids, (a, b) = subject_span(tok, "Danielle Darrieux", "P103", "Some context.", text)
        assert tok.decode(ids[a:b]).strip() == "Danielle Darrieux"
        with pytest.raises(EditlabError, match="does not occur in its prompt"):
            subject_span(tok, "Leo Arons", "P103", "", text)


@pytest.mark.parametrize("name", ["lora", "rome"])
def test_a_world_request_written_as_benchmark_text_is_the_same_edit(tiny_lm, name):
    """Where the two paths meet (the prompt "s r" as a benchmark's text) they make bit-identical edits; a subject
    span read from the relation instead of the text (the broken variant) differs."""
    case = tiny_lm.world.cases[0]
    world = EditRequest(case["subject"], case["relation"], case["requested_object"], "c0")
    text = EditRequest(case["subject"], "P000", case["requested_object"], "c0", text=world.prompt)
    ctx = EditContext(tokenizer=tiny_lm.tok, world_dir=tiny_lm.world.dir, model_id="test-mistral")
    edited = []
    for req in (world, text):
        method = registry.get_method(name, fixture_hparams(name))
        method.prepare(tiny_lm.model, ctx)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            handle = method.apply(tiny_lm.model, [req], ctx)
        edited.append({k: v.detach().clone() for k, v in handle.model.state_dict().items()})
        handle.restore()
    assert edited[0].keys() == edited[1].keys()
    assert all(torch.equal(edited[0][k], edited[1][k]) for k in edited[0])
    # broken variant: the key position taken from "subject P000" (the relation), not from the request's text
    assert subject_ids(tiny_lm.tok, text, "")[1] == subject_ids(tiny_lm.tok, world, "")[1]
    assert subject_span(tiny_lm.tok, text.subject, text.relation)[0] != subject_ids(tiny_lm.tok, text, "")[0]


def _run(hf_dirs, tmp_path, kind: str, fmt: str, name: str, mode: str = "single", batch: int = 1, n: int = 2,
         dtype: str = "float32") -> dict:
    method = registry.get_method(name, {**fixture_hparams(name), **SMALL.get(name, {})})
    options = {"target": "alt"} if fmt == "zsre" else {}
    return benchmark_run(BenchmarkRun(
        data=BenchmarkData(fmt, fmt, hf_dirs[fmt], options), model_path=str(hf_dirs[kind]), dtype=dtype,
        method=method, edits=EditsConfig(n=n, mode=mode, batch_size=batch), run_dir=tmp_path / f"{kind}-{name}-{mode}",
        seed=0, run_config={"method": name, "mode": mode}, progress=False, cache_root=tmp_path / "stats",
        stats_dataset=hf_dirs["text"]))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("name", HF_METHODS)
def test_every_method_edits_counterfact_requests_on_gpt2_and_llama(hf_dirs, tmp_path, kind, name):
    out = _run(hf_dirs, tmp_path, kind, "counterfact", name)
    recs = [json.loads(x) for x in Path(out["results"]).read_text().splitlines()]
    assert [r["case_id"] for r in recs] == ["0", "1"] and out["model_id"].startswith("hf-")
    for stage in ("pre", "post"):
        assert {"rewrite_success", "paraphrase_success", "neighborhood_success", "edit_succ_exact"} <= set(
            out["summary"][stage])
    assert out["summary"]["post"]["score"] is not None and out["summary"]["post"]["score_reference_code"] is not None
    if name in ("ft_m", "grace"):  # the methods that push the target's NLL down without a norm bound
        assert out["summary"]["post"]["rewrite_success"] == 1.0 > out["summary"]["pre"]["rewrite_success"]


@pytest.mark.parametrize("name", HF_METHODS)
def test_every_method_edits_zsre_requests_sequentially(hf_dirs, tmp_path, name):
    """zsRE requests committed one batch after another (two at once where the method takes batches), on GPT-2 and
    Llama by turns: both stages after the edit are scored and the model keeps its committed edits between batches."""
    kind = ("gpt2", "llama")[HF_METHODS.index(name) % 2]
    batch = 2 if registry.method_class(name).supports_batch else 1
    out = _run(hf_dirs, tmp_path, kind, "zsre", name, mode="sequential", batch=batch, n=2)
    assert set(out["summary"]) == {"pre", "post", "final"} and out["n"] == 2
    assert {"edit_succ", "edit_succ_exact", "rephrase", "locality/nq acc", "locality/nq agree"} <= set(
        out["summary"]["final"])
    if name in ("ft_m", "grace"):
        assert out["summary"]["final"]["edit_succ"] > out["summary"]["pre"]["edit_succ"]


@pytest.mark.parametrize(("kind", "fmt", "name", "mode", "dtype"), [("llama", "zsre", "ft_m", "batch", "bfloat16"),
                                                                    ("gpt2", "zsre", "memit", "sequential", "float32"),
                                                                    ("gpt2", "knowedit", "lora", "batch", "float32"),
                                                                    ("llama", "knowedit", "grace", "sequential",
                                                                     "float32")])
def test_batch_and_sequential_on_zsre_and_knowedit(hf_dirs, tmp_path, kind, fmt, name, mode, dtype):
    out = _run(hf_dirs, tmp_path, kind, fmt, name, mode=mode, batch=2, n=4, dtype=dtype)
    recs = [json.loads(x) for x in Path(out["results"]).read_text().splitlines()]
    assert [r["batch"] for r in recs] == [2, 2, 2, 2] and out["n"] == 4
    stages = ("pre", "post", "final") if mode == "sequential" else ("pre", "post")
    assert set(out["summary"]) == set(stages)
    cases = read_benchmark(fmt, hf_dirs[fmt], **({"target": "alt"} if fmt == "zsre" else {}))
    loc = {p.kind for c in cases for p in c.probes if p.kind.startswith("locality/")}
    for stage in stages:
        assert "edit_succ" in out["summary"][stage]
        assert all(f"{k} agree" in out["summary"][stage] for k in loc)
    assert all(out["summary"]["pre"][f"{k} agree"] == 1.0 for k in loc)  # the pre-edit model agrees with itself
    if fmt == "knowedit":
        assert out["summary"]["post"]["portability"] is not None
    assert out["dtype"] == dtype
    if name == "ft_m":  # edited in bfloat16 weights, the requests are reached all the same
        assert out["summary"]["post"]["edit_succ_exact"] == 1.0


def _cli(args: list[str], outputs: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDITLAB_OUTPUTS": str(outputs)}
    return subprocess.run([sys.executable, "edit.py", "progress=false", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_edit_py_edits_a_hf_model_on_a_counterfact_file(hf_dirs, tmp_path):
    args = ["model=hf", f"model.path={hf_dirs['gpt2']}", "data=counterfact", f"data.path={hf_dirs['counterfact']}",
            "method=ft_m", "method.hparams.steps=20", "edits.n=2"]
    res = _cli(args, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "2 ft_m edits (single) on counterfact: rewrite_success" in res.stdout
    run = tmp_path / "edit" / "counterfact" / "hf-gpt2-s0" / "ft_m-single-n2-s0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["benchmark"] == "counterfact" and len((run / "results.jsonl").read_text().splitlines()) == 2
    again = _cli(args, tmp_path)
    assert again.returncode == 0 and "finished earlier" in again.stdout


def test_a_missing_benchmark_file_is_one_line_and_writes_nothing(hf_dirs, tmp_path):
    res = _cli(["model=hf", f"model.path={hf_dirs['gpt2']}", "data=counterfact", "edits.n=2"], tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "data=counterfact reads a local counterfact file: add data.path=<file>" in res.stderr
    assert not (tmp_path / "edit").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"model_path": "someorg/not-cached"}, "hf download someorg/not-cached"),
    ({"name": "mend"}, "needs an editor meta-trained for this model"),
    ({"name": "propagate"}, "reads the world"),
    ({"target": "credence"}, "world's cases only"),
    ({"n": 50}, "has 4 records"),
])
def test_bad_benchmark_input_is_refused_before_anything_is_written(hf_dirs, tmp_path, change, message):
    name = change.get("name", "lora")
    method = registry.get_method(name, fixture_hparams(name))
    run = BenchmarkRun(data=BenchmarkData("counterfact", "counterfact", hf_dirs["counterfact"]),
                       model_path=change.get("model_path", str(hf_dirs["gpt2"])), dtype="float32", method=method,
                       edits=EditsConfig(n=change.get("n", 2), target=change.get("target", "certain")),
                       run_dir=tmp_path / "run", seed=0, run_config={}, progress=False)
    with pytest.raises(EditlabError, match=message):
        benchmark_run(run)
    assert not (tmp_path / "run").exists()


def test_meta_training_examples_of_a_benchmark_follow_its_fields():
    from editlab.benchmarks import read_benchmark as read
    from editlab.editing.meta_data import MetaDataOptions, Target, benchmark_examples

    def examples(fmt, records, n_locality=1, **opts):
        with tempfile.TemporaryDirectory() as tmp:
            path = write_records(Path(tmp) / "f.json", records)
            return benchmark_examples(read(fmt, path, **opts), MetaDataOptions(n_locality=n_locality), seed=0)

    zs = examples("zsre", ZSRE, target="alt")[0]  # MEND's zsRE: src and rephrase -> alt, loc -> loc_ans
    assert zs.request.prompt == ZSRE[0]["src"] and zs.request.target == ZSRE[0]["alt"]
    assert zs.equivalents == (Target(ZSRE[0]["src"], ZSRE[0]["alt"]), Target(ZSRE[0]["rephrase"], ZSRE[0]["alt"]))
    assert zs.locality == (Target(ZSRE[0]["loc"], ZSRE[0]["loc_ans"]),)
    cf = examples("counterfact", COUNTERFACT, n_locality=2)[0]  # neighbours keep the true target
    true = COUNTERFACT[0]["requested_rewrite"]["target_true"]["str"]
    assert cf.locality == tuple(Target(p, true) for p in COUNTERFACT[0]["neighborhood_prompts"])
    assert len(cf.equivalents) == 1 + len(COUNTERFACT[0]["paraphrase_prompts"])
    ke = examples("knowedit", KNOWEDIT[:2], n_locality=3)  # own locality first, topped up from the other subject
    assert ke[0].locality[0] == Target("The name of the father of Leo Arons is", "Albert Arons")
    assert len(ke[0].locality) == 3 and all("Leo Arons" not in t.prompt for t in ke[0].locality[1:])


@pytest.mark.parametrize("name", ["mend", "serac"])
def test_an_editor_meta_trained_on_a_zsre_train_file_edits_zsre_requests(hf_dirs, tmp_path, name):
    from editlab.editing.trainable import EditorTraining
    from editlab.runs.train_editor import EditorRun, train_editor

    hp = {**fixture_hparams(name), **({"layers": [-1, -2]} if name == "mend" else {})}
    zsre = BenchmarkData("zsre", "zsre", hf_dirs["zsre_train"], {"target": "alt"})
    run = BenchmarkRun(data=BenchmarkData("zsre", "zsre", hf_dirs["zsre"], {"target": "alt"}),
                       model_path=str(hf_dirs["gpt2"]), dtype="float32", method=registry.get_method(name, hp),
                       edits=EditsConfig(n=2), run_dir=tmp_path / "edit", seed=0, run_config={}, progress=False,
                       editor_path=tmp_path / "editor")
    with pytest.raises(EditlabError, match=rf"train\.py task=editor method={name} model=hf"):
        benchmark_run(run)  # no editor yet: the command that trains it
    out = train_editor(EditorRun(None, hf_dirs["gpt2"], registry.get_method(name, hp), tmp_path / "editor", 0,
                                 EditorTraining(max_steps=4, batch_size=4, val_every=2), {"test": 1}, progress=False,
                                 benchmark=zsre))
    assert out["base_model_id"] == load_hf_for_editing(str(hf_dirs["gpt2"])).model_id
    done = benchmark_run(run)
    assert done["n"] == 2 and "edit_succ" in done["summary"]["post"]
    with pytest.raises(EditlabError, match="agent's posteriors"):
        train_editor(EditorRun(None, hf_dirs["gpt2"], registry.get_method(name, hp), tmp_path / "soft", 0,
                               EditorTraining(max_steps=4, batch_size=4, soft_downstream=True), {}, progress=False,
                               benchmark=zsre))
    if name == "serac":  # the agent's scope needs the agent
        with pytest.raises(EditlabError, match="scope=agent"):
            train_editor(EditorRun(None, hf_dirs["gpt2"], registry.get_method(name, {**hp, "scope": "agent"}),
                                   tmp_path / "agent", 0, EditorTraining(max_steps=4, batch_size=4), {},
                                   progress=False, benchmark=zsre))


def _references(directory: Path, words: list[str] | None = None, text: str = "French French city") -> Path:
    """ROME's three reference files, small: snippets about target Q150 (French) of relation P103; ``words``: the
    vocabulary (idf 1 each; default four words with their own idf)."""
    directory.mkdir(parents=True, exist_ok=True)
    snippets = [{"name": "Montesquieu", "relation_id": "P103", "target_id": "Q150", "samples": [{"text": text}]},
                {"name": "Tolkien", "relation_id": "P103", "target_id": "Q1860", "samples": [{"text": "English"}]}]
    (directory / "attribute_snippets.json").write_text(json.dumps(snippets))
    vocab = words or ["paris", "french", "city", "english"]
    (directory / "tfidf_vocab.json").write_text(json.dumps({w: i for i, w in enumerate(vocab)}))
    np.save(directory / "idf.npy", np.ones(len(vocab)) if words else np.array([1.0, 2.0, 0.5, 1.5]))
    return directory


def test_reference_score_is_rome_s_tfidf_cosine(tmp_path):
    from editlab.benchmarks.references import ReferenceTexts

    refs = ReferenceTexts.load(_references(tmp_path))
    a = np.array([1.0, 2.0, 0.5, 0.0])  # "Paris is a French city": counts 1, 1, 1 times idf ("is", "a" not in vocab)
    b = np.array([0.0, 4.0, 0.5, 0.0])  # "French French city"
    want = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert refs.consistency(["Paris is a French city"], "P103", "Q150") == pytest.approx(want, abs=1e-12)
    assert want != pytest.approx((np.ones(3) @ np.array([0, 2, 1])) / math.sqrt(3) / math.sqrt(5))  # without idf
    assert refs.consistency(["Paris"], "P103", "Q999") is None  # no snippets about that target
    with pytest.raises(EditlabError, match=r"lacks idf\.npy"):
        (tmp_path / "idf.npy").unlink()
        ReferenceTexts.load(tmp_path)


def test_generations_continue_each_prompt_to_rome_s_length(hf_dirs):
    from editlab.eval.benchmark_scores import generations

    loaded = load_hf_for_editing(str(hf_dirs["llama"]))
    prompts = ["The mother tongue of Danielle Darrieux is", "Léon Blum, a native"]
    texts = generations(loaded.model, loaded.tokenizer, prompts, max_len=12, seed=3)
    assert all(t.startswith(p) and len(t) > len(p) for t, p in zip(texts, prompts, strict=True))
    assert texts == generations(loaded.model, loaded.tokenizer, prompts, max_len=12, seed=3)  # seeded


def test_counterfact_runs_report_fluency_and_the_reference_score(hf_dirs, tmp_path):
    records = json.loads(hf_dirs["counterfact"].read_text())
    for r in records:
        r["requested_rewrite"]["target_new"]["id"] = "Q150"
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(records))
    words = {w for s in SENTENCES for w in re.findall(r"\w\w+", s.lower())}  # the generation prompts' words too
    method = registry.get_method("ft_m", {**fixture_hparams("ft_m"), "steps": 5})
    out = benchmark_run(BenchmarkRun(
        data=BenchmarkData("counterfact", "counterfact", path, {}, generation_tokens=16,
                           references=_references(tmp_path / "refs", sorted(words), " ".join(SENTENCES))),
        model_path=str(hf_dirs["gpt2"]), dtype="float32", method=method, edits=EditsConfig(n=2),
        run_dir=tmp_path / "run", seed=0, run_config={}, progress=False))
    for stage in ("pre", "post"):
        assert out["summary"][stage]["fluency"] > 0 and out["summary"][stage]["reference_score"] is not None
