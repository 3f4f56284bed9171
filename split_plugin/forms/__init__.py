"""The forms an intervention can take: one `Form` per file, and the registry that names them.

Every form is a way of writing the one update `h_out = (W + m dW) x + (b + m db)` at a layer's
MLP down projection (x is its input, W its weight). A form says which parameters it trains,
how they give dW and db, where its hook sits, how it folds into the weights, and its default
training strengths. To add a form: write `forms/<name>.py` with a `Form` subclass and add one
line to `REGISTRY` below.
"""
from __future__ import annotations

from ..errors import SplitPluginError
from .base import Form
from .local_weight import LocalWeightForm
from .lora import LoraForm
from .vector import VectorForm

REGISTRY: dict[str, Form] = {form.name: form for form in (VectorForm(), LoraForm(), LocalWeightForm())}
FORMS = tuple(REGISTRY)


def get_form(name: str) -> Form:
    """The form called `name`; an unknown name is refused with the list of known ones."""
    form = REGISTRY.get(name) if isinstance(name, str) else None
    if form is None:
        raise SplitPluginError(f"form {name!r} is not one of {FORMS}")
    return form


__all__ = ["FORMS", "REGISTRY", "Form", "get_form"]
