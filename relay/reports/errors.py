"""What goes wrong when a reviewed report is handed to an authority's API."""

from __future__ import annotations

from relay.errors import SluiceError

__all__ = ["ReportError", "SubmissionError"]


class ReportError(SluiceError, ValueError):
    """A draft cannot be made or is not what the authority accepts; names the field."""


class SubmissionError(SluiceError):
    """The authority's API refused a report or could not be reached.

    ``status`` is the HTTP status (None: no answer), ``code`` the API's own code when
    it gave one (NCMEC's ``responseCode``), so an admin can tell a retry from a fix.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
