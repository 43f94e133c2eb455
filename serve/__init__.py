"""Serve: OpenAI- and Ollama-compatible APIs over llama.cpp (CPU), vLLM (GPU) or a fake engine (tests)."""
