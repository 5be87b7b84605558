"""Training: losses, optimizer, the text multi-loss step (and the loop)."""
