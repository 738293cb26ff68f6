"""Code every Chirp service shares: bootstrap, interceptors, errors, CQL, logs."""
