"""Layer 4, health: thresholds and the rules that turn frozen statistics into findings."""
