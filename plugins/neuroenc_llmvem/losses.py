"""Alignment losses between the encoding model's image embedding and a text embedding.

LLM-VEM (Ma et al. 2024) adds a contrastive loss, weighted by a small lambda, that pulls
the image embedding of the encoding model towards the CLIP text embedding of the
image's LLM-written description. The paper's exact form and temperature are not known
(REFERENCE.md section 1); we use the symmetric InfoNCE of CLIP (Radford et al. 2021)
with in-batch negatives, a fixed temperature of 0.07 by default (CLIP's initial value):
**our assumption**, configurable.

Under DistributedDataParallel the negatives are global: every rank's embeddings are
gathered (``distributed.gather_rows``, as open_clip's ``gather_features``), so the loss
is the one of the global batch and lambda means the same at any number of GPUs.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field

from neuroenc import Component


class ContrastiveParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(0.1, ge=0, description="lambda: the loss is weight * InfoNCE; 0 = "
                          "no alignment (exactly the model without it)")
    temperature: float = Field(0.07, gt=0, description="softmax temperature of the similarities")
    learnable_temperature: bool = Field(False, description="learn log(1/temperature), as CLIP")


def info_nce(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
             logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Return the symmetric InfoNCE loss of paired embeddings, a scalar tensor.

    Parameters
    ----------
    image_embeddings, text_embeddings : tensor of shape (batch, dim)
        Row i of each is a positive pair; every other row of the batch is a negative.
    logit_scale : float or scalar tensor
        1 / temperature.
    """
    if image_embeddings.shape != text_embeddings.shape:
        raise ValueError(f"image embeddings have shape {tuple(image_embeddings.shape)} but text "
                         f"embeddings {tuple(text_embeddings.shape)}; expected the same (batch, dim)")
    img = torch.nn.functional.normalize(image_embeddings.float(), dim=-1)
    txt = torch.nn.functional.normalize(text_embeddings.float(), dim=-1)
    logits = logit_scale * img @ txt.T
    target = torch.arange(len(img), device=img.device)
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                  + torch.nn.functional.cross_entropy(logits.T, target))


class ContrastiveLoss(torch.nn.Module):
    """Symmetric InfoNCE with a (fixed or learnable) temperature, and its weight lambda."""

    def __init__(self, params: ContrastiveParams):
        super().__init__()
        self.weight = params.weight
        scale = torch.tensor(math.log(1.0 / params.temperature))
        if params.learnable_temperature:
            self.log_scale = torch.nn.Parameter(scale)
        else:
            self.register_buffer("log_scale", scale)

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Return the loss of the global batch: under a process group, of every rank's rows
        (gathered with gradient; ``distributed.gather_rows``)."""
        from .distributed import gather_rows

        image_embeddings = gather_rows(image_embeddings)
        text_embeddings = gather_rows(text_embeddings)
        # CLIP clamps the scale at 100 so a learnable temperature cannot collapse.
        return info_nce(image_embeddings, text_embeddings, self.log_scale.exp().clamp(max=100.0))


COMPONENTS = [
    Component("contrastive", lambda params, context: ContrastiveLoss(params), ContrastiveParams,
              "symmetric InfoNCE between image and text embeddings, weighted by lambda"),
]
