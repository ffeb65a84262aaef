"""The doors through which traffic enters and leaves the instance (see DESIGN.md)."""
