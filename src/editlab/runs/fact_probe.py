"""A callback that scores a fixed sample of facts during pretraining (the paper's Figure 3 curves).

Generative accuracy (paper protocol: the modal object is a substring of the greedy continuation of
``"s r"``, lower-cased, periods removed) and probabilistic coherence (mean |p_LM(o | s r) - p_agent|
for the modal object o) against the Bayesian agent, logged with the tokens seen so far.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from editlab.eval.scoring import encode_pairs, greedy_continuations, object_logprobs
from editlab.vocab import fact_prompt, hit_paper
from editlab.world.loading import World


class FactProbe(L.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end), score ``n_facts`` seeded facts."""

    def __init__(self, world_dir: Path, n_facts: int = 500, every_n_steps: int = 200, seed: int = 0,
                 batch_size: int = 256) -> None:
        world = World.open(world_dir)
        facts = world.facts
        pick = np.random.default_rng([seed, 99]).choice(len(facts), size=min(n_facts, len(facts)), replace=False)
        self.sample = [facts[i] for i in sorted(pick.tolist())]
        self.tok = PreTrainedTokenizerFast.from_pretrained(str(world_dir))
        self.prompts, self.objects = encode_pairs(
            self.tok, [fact_prompt(f) for f in self.sample], [f["modal"] for f in self.sample])
        every_obj = self.tok([" " + f["modal"] for f in facts], add_special_tokens=False)["input_ids"]
        self.max_object_tokens = max(len(x) for x in every_obj)
        self.gold = torch.tensor([world.gold(f["subject"], f["relation"], f["modal"]) for f in self.sample],
                                 dtype=torch.float64)
        self.every, self.batch_size = every_n_steps, batch_size
        self.history: list[dict] = []

    @torch.no_grad()
    def score(self, model: torch.nn.Module) -> dict[str, float]:
        """Generative accuracy and probabilistic coherence of ``model`` on the sample."""
        was_training = model.training
        model.eval()
        cont = greedy_continuations(model, self.tok, self.prompts, self.max_object_tokens, self.batch_size)
        p = object_logprobs(model, self.prompts, self.objects, self.tok.pad_token_id, self.batch_size).exp()
        model.train(was_training)
        acc = float(np.mean([hit_paper(c, f["modal"]) for c, f in zip(cont, self.sample, strict=True)]))
        return {"gen_acc": acc, "prob_coherence": float((p - self.gold).abs().mean())}

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        scores = self.score(pl_module.model)
        tokens = trainer.global_step * pl_module.tokens_per_step
        self.history.append({"step": trainer.global_step, "tokens": tokens, **scores})
        # straight to the loggers at this step: self.log from a callback would re-emit the value at every
        # later log step of the (single, step-bounded) epoch
        for logger in trainer.loggers:
            logger.log_metrics({f"probe/{k}": v for k, v in scores.items()} | {"probe/tokens": tokens},
                               step=trainer.global_step)

    def state_dict(self) -> dict:
        # the curve so far travels in last.ckpt, so a resumed run reports the whole curve
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every and trainer.global_step % self.every == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.history or self.history[-1]["step"] != trainer.global_step:
            self._log(trainer, pl_module)
