"""Errors a user can act on. The CLI maps `UserError` to exit code 2 with a one-line message."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: a recipe, a path, a name or a config value the user can fix."""


class ManifestError(UserError):
    """A saved model directory that cannot be loaded as it stands."""
