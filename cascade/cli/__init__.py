"""The ``cascade`` command line, one module per verb group, and the demo and eval jobs behind it."""
