"""The service graph: the bounded accumulator, its records, per-agent slices and DOT output."""
