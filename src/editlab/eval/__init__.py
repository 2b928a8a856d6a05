"""Scoring LMs on prompts (batched), report tables and plots."""
