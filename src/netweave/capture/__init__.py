"""Packet sources (eBPF, AF_PACKET, capture files) turned into the same event records."""
