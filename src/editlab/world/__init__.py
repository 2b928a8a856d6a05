"""The semi-synthetic world: KG sources, generative model, corpus, tokenizer, Bayesian agent, cases."""
