"""SAM 2.1 as a segmenter: `SAM2ImagePredictor`'s image path, with the embedding as a frozen cached value.

The steps are the official predictor's, through the package's own pieces:
`SAM2Transforms` resizes the image to 1024×1024 (no aspect-preserving padding)
and normalises it, and later maps point coordinates (normalised by the image's
size) and upsamples the low-resolution logits back to it; `SAM2Base.forward_image`
encodes, with the decoder's stride-4 and stride-8 projections precomputed; the
"no memory" embedding is added to the lowest-resolution map as on a single
image; the prompt encoder and mask decoder give three masks and their scores
(multimask output), thresholded at 0.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..method.results import MaskPrediction
from ..precision import autocast
from .segmenter import DEFAULT_CACHE_ENTRIES, ImageEmbedding, Segmenter, prediction_from_logits

MASK_THRESHOLD = 0.0  # SAM2ImagePredictor's default


class Sam2Segmenter(Segmenter):
    """One SAM 2.1 network (`sam2.modeling.sam2_base.SAM2Base`) with `Segmenter`'s cache and checks."""

    family = "sam2.1"

    def __init__(self, model: torch.nn.Module, precision: str = "fp32", cache_entries: int = DEFAULT_CACHE_ENTRIES,
                 name: str = "sam2.1") -> None:
        from sam2.utils.transforms import SAM2Transforms

        super().__init__(model, precision, cache_entries, name)
        # Stateless after construction, so one serves every request. It scripts its resize with
        # torch.jit.script, which torch now flags as deprecated on every call: not the user's concern.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
            self.transforms = SAM2Transforms(resolution=model.image_size, mask_threshold=MASK_THRESHOLD)

    def _encode_image(self, image_rgb: np.ndarray, key: str) -> ImageEmbedding:
        model = self.model
        # torchvision's ToTensor wraps the array and warns when it is read-only (as decoded images are
        # here); it only reads it, but a copy (a few ms) keeps the user's stderr clean.
        pixels = image_rgb if image_rgb.flags.writeable else image_rgb.copy()
        image = self.transforms(pixels)[None].to(self.device)
        with torch.inference_mode(), autocast(self.precision, self.device):
            levels = model.forward_image(image)["backbone_fpn"][-model.num_feature_levels:]
            lowest = levels[-1]
            if model.directly_add_no_mem_embed:  # a single image: no memory of earlier frames
                lowest = lowest + model.no_mem_embed.view(1, -1, 1, 1)
        return ImageEmbedding(
            features=lowest.float(),
            original_size=(int(image_rgb.shape[0]), int(image_rgb.shape[1])),
            input_size=(int(image.shape[-2]), int(image.shape[-1])),
            key=key,
            high_res_features=tuple(level.float() for level in levels[:-1]),
        )

    def _decode(self, embedding: ImageEmbedding, points: np.ndarray) -> MaskPrediction:
        model, device = self.model, self.device
        coords = torch.as_tensor(points[:, :2].astype(np.float32), device=device)
        coords = self.transforms.transform_coords(coords, normalize=True, orig_hw=embedding.original_size)[None]
        labels = torch.as_tensor(points[:, 2], dtype=torch.int, device=device)[None]
        with torch.inference_mode(), autocast(self.precision, device):
            sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            low_res_logits, scores, _, _ = model.sam_mask_decoder(
                image_embeddings=embedding.features.to(device),
                image_pe=model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
                repeat_image=False,
                high_res_features=[feature.to(device) for feature in embedding.high_res_features],
            )
            logits = self.transforms.postprocess_masks(low_res_logits, embedding.original_size)
        return prediction_from_logits(logits[0], scores[0], MASK_THRESHOLD)
