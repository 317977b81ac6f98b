"""Evolution: prompts and operations (`prompts`), one row's chain with WizardLM's elimination rules
(`chain`, `rules`), and the round's engine stage (`stage`)."""
