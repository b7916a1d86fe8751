"""Host socket table: sock_diag and procfs snapshots, process attribution, namespaces,
direction classification, and the per-host lists the dependency map is built from.

Entry points: :func:`netweave.sockets.snapshot.take_snapshot` for one classified table and
:class:`netweave.sockets.hostmap.HostMap` to accumulate snapshots and live state-change events.
"""
