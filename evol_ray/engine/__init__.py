"""The engine: the one seam for the model (`base.TextGenerator`: prompts in, text out), vLLM
behind it (`vllm_engine`), its meters (`meter`), the engine actor every GPU stage builds on
(`actor`) and where engines run (`resources`)."""
