"""The build: train the cheap tiers on labels, calibrate their thresholds, export them (ONNX) and write the task into
a model repository (``cascade build``)."""
