"""What runs inside tritonserver: the gate (confidence gating, BLS calls, lanes) and the tier runtimes."""
