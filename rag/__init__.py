"""RAG: load -> chunk -> embed -> Chroma store; retrieve with a confidence gate; answers cite their sources."""
