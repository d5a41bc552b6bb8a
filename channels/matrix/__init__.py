"""The Matrix channel: matrix-nio against a homeserver, with optional end-to-end encryption."""
