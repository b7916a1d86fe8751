"""netweave: an eBPF network agent.

It maps what talks to what, labels every node with what it runs, and guards the host it
runs on. The kernel does the per-packet work in eBPF; Python does everything above.
"""

__version__ = "0.1.0"
