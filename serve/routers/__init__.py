"""HTTP routers: OpenAI and Ollama APIs."""
