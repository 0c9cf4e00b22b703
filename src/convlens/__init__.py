"""convlens: train, track and serve CNNs, and see what they learn."""


class UserError(Exception):
    """Something the user can fix; command-line tools print the message as one line."""
