"""Admin for credits and usage corrections."""
