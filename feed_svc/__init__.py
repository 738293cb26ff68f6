"""feed_svc: home timelines (hybrid fan-out)."""
