"""Sans-IO passive fingerprints: p0f v3, JA4 (BSD-3) and FoxIO-licensed JA4T/JA4TS/JA4S."""
