"""Layer 5, runs: what each command runs (inspect, the mask effect, several checkpoints, check,
trend, compare, overlays) and the torchrun sharding they share."""
