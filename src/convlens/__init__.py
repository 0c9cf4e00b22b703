"""convlens: train, track and serve CNNs, and see what they learn."""


class UserError(Exception):
    """Something the user can fix; command-line tools print the message as one line and exit
    with `exit_status` (`convlens.cli.errors_as_lines`)."""

    exit_status = 2
