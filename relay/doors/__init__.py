"""The doors through which traffic enters and leaves the instance (see DESIGN.md)."""

# The doors are imported from their own modules; the package re-exports nothing.
__all__: list[str] = []
