"""Export: merge, GGUF conversion + quantization, parity check, Ollama Modelfile, edge bundle."""
