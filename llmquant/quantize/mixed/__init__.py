"""Mixed precision: per-layer bit widths chosen under a budget."""
