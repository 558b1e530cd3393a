"""The LLM tiers: llama.cpp label scorers and text generation on CPU, TensorRT-LLM logic on GPU, GGUF files."""
