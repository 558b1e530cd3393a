"""Process supervision: find the tritonserver binary and Python stub, start, watch and stop the server."""
