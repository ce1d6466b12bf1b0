"""dtmon processor stage."""
