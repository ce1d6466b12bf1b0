"""dtmon producer stage."""
