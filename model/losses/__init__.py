"""The method's three losses, one per module."""
