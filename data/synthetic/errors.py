"""The one error the generator raises for a user's mistake."""


class SyntheticDataError(ValueError):
    """A bad argument or output directory; the message is one line saying what was expected."""
