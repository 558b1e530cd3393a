"""The tier runtimes below the gate: ONNX Runtime sessions over texts or embeddings, and thread counts."""
