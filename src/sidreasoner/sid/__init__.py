"""Item embeddings and Semantic ID quantization."""
