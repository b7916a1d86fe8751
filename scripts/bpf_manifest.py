"""Write manifest.json: the SHA-256 of every compiled kernel object in a folder."""

import hashlib
import json
import sys
from pathlib import Path


def main(folder: str) -> None:
    """Hash each ``*.o`` in ``folder`` and write ``manifest.json`` beside them."""
    root = Path(folder)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("*.o"))}
    (root / "manifest.json").write_text(json.dumps({"version": 1, "objects": digests}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
