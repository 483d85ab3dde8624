"""Aggregation: ask k experts at once and merge their answers (synthesize, vote, best)."""
