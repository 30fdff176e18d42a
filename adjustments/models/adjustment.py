"""Credits and usage corrections with four-eyes approval (filled by [7])."""

__all__: list[str] = []
