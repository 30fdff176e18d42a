"""The append-only, hash-chained audit log (filled by [7])."""

__all__: list[str] = []
