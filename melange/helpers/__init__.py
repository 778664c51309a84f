"""melange 7.x's ``melange.helpers`` package, kept for its ``typing`` module (deprecated)."""
