"""User-facing errors: one clear line that says what is wrong and what to do."""


class MMCamError(ValueError):
    """Bad input or configuration. The message is one line meant for the user.

    The CLI prints it and exits with code 2; the app shows it; nothing is changed.
    """
