"""``python -m cascade.doctor.probe``: what ``cascade doctor`` runs in a subprocess to try llama.cpp.

Prints one JSON line with llama.cpp's system info (what the build was compiled for) before anything else, so a
crash that follows still tells which build crashed; then loads the smallest packaged GGUF (SmolLM2-135M) with a
64-token context and two threads, evaluates a batch of 8 tokens and prints a second line with the time it took.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    start = time.perf_counter()
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    info = info.decode(errors="replace") if isinstance(info, bytes) else str(info)
    print(json.dumps({"system_info": info}), flush=True)
    from cascade.llm.gguf import MODEL_SMOLLM2, gguf_path, load_llama

    path = gguf_path(MODEL_SMOLLM2)
    llm = load_llama(path, n_ctx=64, n_threads=2)  # worker threads too: AMX faults where a worker runs it
    tokens = llm.tokenize(b"Is this review positive? A gripping, beautifully acted film.", add_bos=True)[:8]
    t = time.perf_counter()
    llm.eval(tokens)  # a batch of tokens: the matrix-matrix kernels, not only the one-row ones
    eval_ms = (time.perf_counter() - t) * 1000
    print(json.dumps({"model": path.name, "eval_ms": eval_ms, "total_s": time.perf_counter() - start}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
