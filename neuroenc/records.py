"""The typed records that hooks return, and the slots that tie them into a model recipe.

A hook implementation returns a list of :class:`Component` records (conda style: small
dataclasses with a ``name``). The plugin manager stamps each record with its ``kind``
(which hook returned it), its ``provider`` (the plugin's registered name) and the
provider's version, so that listings and error messages can name them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["Component", "NoParams", "Slot", "KINDS"]

#: kind -> hook name. The order is the order ``neuroenc plugins`` lists them in.
KINDS: dict[str, str] = {
    "dataset": "neuroenc_datasets",
    "captioner": "neuroenc_captioners",
    "text_encoder": "neuroenc_text_encoders",
    "image_backbone": "neuroenc_image_backbones",
    "voxel_mapper": "neuroenc_voxel_mappers",
    "alignment_loss": "neuroenc_alignment_losses",
    "metric": "neuroenc_metrics",
    "recipe": "neuroenc_recipes",
}


class NoParams(BaseModel):
    """Parameters of a component that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclasses.dataclass(frozen=True)
class Component:
    """One named, parameterised building block offered by a plugin.

    Parameters
    ----------
    name : str
        The name users write in registry.yaml, unique within its kind.
    factory : callable
        ``factory(params, context)`` builds the component from a validated instance of
        ``params`` and a :class:`neuroenc.core.context.RunContext`.
    params : type of pydantic.BaseModel
        The component's parameters; their field names are the YAML keys. Forbid extra
        fields so that typos are reported.
    description : str
        One line shown by ``neuroenc plugins``.
    kind, provider, version : str
        Filled in by the plugin manager; leave them empty in a hook implementation.
    """

    name: str
    factory: Callable[[Any, Any], Any]
    params: type[BaseModel] = NoParams
    description: str = ""
    kind: str = ""
    provider: str = ""
    version: str = ""

    def build(self, params: BaseModel | dict | None, context: Any) -> Any:
        """Return the component built from ``params`` (validated if given as a dict)."""
        if not isinstance(params, self.params):
            params = self.params.model_validate(params or {})
        return self.factory(params, context)


@dataclasses.dataclass(frozen=True)
class Slot:
    """Marks a recipe parameter as a reference to a component of one kind.

    Used as ``Annotated`` metadata on a :class:`neuroenc.core.config.ComponentRef` field of a
    recipe's params model, e.g. ``backbone: Annotated[ComponentRef, Slot("image_backbone")]``.
    The registry validator then checks the referenced name and its parameters.
    """

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown component kind {self.kind!r}; known: {', '.join(KINDS)}")
