"""The image pool of Shrivastava et al. / Zhu et al.: show discriminators a history of fakes."""

from __future__ import annotations

import numpy as np
import torch


class ImagePool:
    """Keeps up to ``size`` past generated images.

    Until the pool is full each new image is stored and returned; afterwards, with probability 0.5,
    a new image is swapped for a stored one (the stored one is returned), else it passes through.
    Randomness comes from the caller's generator, so a run is reproducible and resumable.
    ``size == 0`` turns the pool off (the seed project's setting).
    """

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Return a batch of the same shape mixing ``images`` with stored ones."""
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif rng.random() < 0.5:
                index = int(rng.integers(len(self.images)))
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, dim=0)

    def state_dict(self) -> dict:
        """Stored images as CPU tensors (safe for ``torch.load(weights_only=True)``)."""
        return {"size": self.size, "images": [image.cpu() for image in self.images]}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Restore stored images onto ``device``."""
        self.size = int(state["size"])
        self.images = [image.to(device) for image in state["images"]]
