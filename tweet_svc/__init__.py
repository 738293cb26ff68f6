"""tweet_svc: tweets and likes."""
