"""The judge service: answer scoring by an LLM verdict or a rule metric, batched and cached (docs/design.md §3)."""
