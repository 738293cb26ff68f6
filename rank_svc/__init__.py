"""rank_svc: the trending list."""
