"""The one exception type users catch: bad input or state, with a message that names the fix."""


class SplitPluginError(ValueError):
    """Raised for bad input (config, data, model, files); the message says what to change."""
