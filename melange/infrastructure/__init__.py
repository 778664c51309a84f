"""melange 7.x's ``melange.infrastructure`` package, kept for its ``cache`` module (deprecated)."""
