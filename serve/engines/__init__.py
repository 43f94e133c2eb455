"""Engines behind one Protocol: llamacpp, vllm, fake."""
