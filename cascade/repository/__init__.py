"""Model-repository generation: config.pbtxt from typed specs, the GPU profile, TensorRT-LLM configs."""
