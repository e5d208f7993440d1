"""The built-in stages (registered on import)."""
