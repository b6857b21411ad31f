"""An RGB image as CLIP's input tensor."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_input(image_rgb: np.ndarray, resolution: int, mean: tuple[float, ...] = CLIP_MEAN,
               std: tuple[float, ...] = CLIP_STD, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 3, R, R) float32 on `device`: whole-image bicubic resize (PIL, as torchvision's Resize
    on a PIL image does), scaled to [0, 1], normalised with CLIP's mean and std. No centre crop:
    the whole image is explained."""
    resized = Image.fromarray(image_rgb).resize((resolution, resolution), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    mean_t = torch.tensor(mean).view(3, 1, 1)
    std_t = torch.tensor(std).view(3, 1, 1)
    return ((pixels - mean_t) / std_t).unsqueeze(0).to(device)
