"""Layer 3, stats: streaming accumulators of the masks, the std ratio and the seed blocks' extra
values; mergeable across batches and processes, never keeping a mask."""
