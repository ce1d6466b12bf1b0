"""dtmon dashboard stage."""
