"""Model side: Qwen3 / Llama / Qwen2 on TP-ready layers, the architecture registry, presets, the
built-in byte tokenizer, and the loader (resolve_model / load_tokenizer / build_model)."""
