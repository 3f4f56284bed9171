"""The exceptions users catch: bad input or state, with a message that names the fix.

Everything is a `SplitPluginError`; the subclasses exist so code can tell cases apart by type,
never by matching message text.
"""


class SplitPluginError(ValueError):
    """Raised for bad input (config, data, model, files); the message says what to change."""


class PerRowMultiplierError(SplitPluginError):
    """A per-row multiplier does not fit the rows the hooked module sees (e.g. OPT flattens them)."""


class AlreadyAppliedError(SplitPluginError):
    """The same intervention is already hooked into or folded into this model."""


class TemplateRenderError(SplitPluginError):
    """The tokenizer's chat template refused to render the messages."""
