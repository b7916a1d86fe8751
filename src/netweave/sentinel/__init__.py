"""The sentinel: BPF-LSM protection of files and of netweave itself, and integrity events."""
