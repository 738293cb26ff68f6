"""graph_svc: accounts, sessions and the follow graph."""
