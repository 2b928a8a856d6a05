"""GPU check: the whole pipeline on one GPU in a few minutes, through the entry scripts a user runs; one JSON object.

    make gpu-check                              # python bench/gpu_check.py: mistral_83m on wikidata_synth, cuda
    python bench/gpu_check.py --smoke           # the same steps on the CPU with the demo model (a few minutes)
    python bench/gpu_check.py --steps 500 --edits 100 --out outputs/gpu_check

Steps, each a subprocess of the real command, its output in ``<out>/<step>.log``:

1. ``python train.py model=mistral_83m data=wikidata_synth trainer=gpu max_steps=300`` (the world is built first
   when absent): tokens/s over the run (its fact probes included) and the model-FLOPs utilisation
   (:func:`editlab.utils.hardware.mfu`);
2. ``python edit.py method=<m> edits.n=50 device=cuda`` for LoRA, ROME and MEMIT on that model: median ms per edit,
   peak memory, edit success, locality agreement, wall seconds (ROME's and MEMIT's covariance statistics are built
   within the run, on the GPU);
3. ``python train.py task=editor method=mend editor.max_steps=100`` then ``edit.py method=mend``: the same figures
   and the meta-training time;
4. ``python bench/hf_edit.py --device cuda``: ROME, MEMIT and LoRA on a GPT-2-small-shaped Hugging Face model with its
   own tokenizer on a CounterFact file (``model=hf data=counterfact``; ``--smoke``: a 64-wide, 2-layer one).

A 300-step model is barely trained: the edit figures check that every path runs on the GPU and how fast, not how
well the methods edit (the methods table does that). Prints one JSON object (and writes ``<out>/gpu_check.json``)
with the hardware, each step's figures and its exit status; a failed step names its log.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

from editlab.cli import run_cli
from editlab.errors import EditlabError
from editlab.utils.hardware import describe, mfu
from editlab.utils.jsonio import write_json
from editlab.utils.rundir import read_yaml

ROOT = Path(__file__).resolve().parents[1]
EDIT_METHODS = ("lora", "rome", "memit")


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def step(name: str, script: str, overrides: list[str], out: Path) -> float:
    """Run ``python <script> <overrides>`` from the checkout; its wall seconds, or an error naming its log."""
    path = out / f"{name}.log"
    log(f"{name}: python {script} {' '.join(overrides)}")
    t0 = time.perf_counter()
    with path.open("w") as fh:
        rc = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=ROOT, stdout=fh,
                            stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = path.read_text().strip().splitlines()[-1:] or [""]
        raise EditlabError(f"gpu check step {name} failed (exit {rc}): {tail[0][:200]}; see {path}")
    log(f"{name}: done in {wall:.0f} s")
    return wall


def n_params(model_dir: Path) -> int:
    """Parameters of an exported checkpoint, read from its safetensors header (no weights loaded)."""
    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                n = 1
                for d in fh.get_slice(k).get_shape():
                    n *= d
                total += n
    return total


def edit_figures(run_dir: Path, wall: float) -> dict:
    """The figures of one edit run's metrics.json."""
    m = json.loads((run_dir / "metrics.json").read_text())
    post = m["summary"]["subsets"]["all"]
    return {"median_ms_per_edit": round(1000 * m["median_edit_s"], 1), "peak_mem_mb": round(m["peak_mem_mb"]),
            "edit_success": post.get("post/edit_exact"), "locality_agree": post.get("post/locality_agree"),
            "run_wall_s": m["wall_s"], "command_wall_s": round(wall, 1), "n": m["n"]}


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU run with the demo model and the tiny world")
    ap.add_argument("--steps", type=int, default=None, help="pretraining steps (default 300; --smoke 20)")
    ap.add_argument("--edits", type=int, default=None, help="edit requests per method (default 50; --smoke 5)")
    ap.add_argument("--editor-steps", type=int, default=None, help="MEND meta-training steps (default 100; --smoke 4)")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "gpu_check")
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        raise EditlabError("no CUDA GPU here; run this on a GPU machine, or python bench/gpu_check.py --smoke to try "
                           "the steps on the CPU")
    smoke = args.smoke
    steps, n_edits = args.steps or (20 if smoke else 300), args.edits or (5 if smoke else 50)
    editor_steps = args.editor_steps or (4 if smoke else 100)
    setup = (["model=mistral_tiny_demo", "data=wikidata_synth_tiny"] if smoke
             else ["model=mistral_83m", "data=wikidata_synth"])
    device = "cpu" if smoke else "cuda"
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    pre = out / "pretrain"
    result: dict = {"bench": "gpu_check", "smoke": smoke, "setup": setup, "device": device,
                    "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "hardware": describe("bf16-mixed" if device == "cuda" else None), "out": str(out)}

    wall = step("pretrain", "train.py", [*setup, f"trainer={'cpu' if smoke else 'gpu'}", f"max_steps={steps}",
                                         f"run_dir={pre}", "progress=false", "overwrite=true"], out)
    m = json.loads((pre / "metrics.json").read_text())
    model = read_yaml(pre / "model" / "run_config.yaml")["model"]
    arch, params = model["arch"], n_params(pre / "model")
    tps = m["tokens"] / m["wall_s"]
    result["pretrain"] = {"steps": m["steps"], "tokens": m["tokens"], "run_wall_s": m["wall_s"],
                          "command_wall_s": round(wall, 1), "tokens_per_s": round(tps), "params": params,
                          "precision": m["precision"], "gen_acc": m["gen_acc"],
                          "mfu": mfu(result["device_name"], params, arch["num_hidden_layers"], arch["hidden_size"],
                                     model["recipe"]["seq_len"], tps)}
    common = [*setup, f"checkpoint={pre / 'model'}", f"edits.n={n_edits}", f"device={device}",
              "metrics.n_samples=0", "progress=false", "overwrite=true"]
    result["edit"] = {}
    for method in EDIT_METHODS:
        run_dir = out / f"edit-{method}"
        wall = step(f"edit-{method}", "edit.py", [*common, f"method={method}", f"run_dir={run_dir}"], out)
        result["edit"][method] = edit_figures(run_dir, wall)
    wall = step("meta-train-mend", "train.py", [*setup, "task=editor", "method=mend", f"run_dir={pre}",
                                                f"editor.max_steps={editor_steps}", f"editor.val_every={editor_steps}",
                                                "progress=false", f"trainer={'cpu' if smoke else 'gpu'}"], out)
    run_dir = out / "edit-mend"
    edit_wall = step("edit-mend", "edit.py", [*common, "method=mend", f"run_dir={run_dir}"], out)
    result["edit"]["mend"] = {**edit_figures(run_dir, edit_wall), "meta_train_steps": editor_steps,
                              "meta_train_command_wall_s": round(wall, 1)}
    hf = out / "hf"  # a GPT-2-small-shaped Hugging Face model on a CounterFact file (bench/hf_edit.py)
    shape = ["--width", "64", "--layers", "2", "--stats-tokens", "1000"] if smoke else []
    wall = step("hf-edit", "bench/hf_edit.py", ["--device", device, "--edits", str(min(n_edits, 20)), "--out", str(hf),
                                                *shape], out)
    result["hf_edit"] = {**json.loads((hf / "hf_edit.json").read_text()), "command_wall_s": round(wall, 1)}
    write_json(out / "gpu_check.json", result)
    return result


if __name__ == "__main__":
    print(json.dumps(run_cli(lambda: main(sys.argv[1:]), resume_hint="re-run the check")))
