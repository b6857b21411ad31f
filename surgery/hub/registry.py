"""Named checkpoints on the Hugging Face Hub (a table, apart from the loaders).

Like open_clip's `pretrained.py`: each entry says where the weights live and how
to check them. `surgery.hub.download` does the downloading and verification.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HubCheckpoint:
    """One downloadable weight file.

    `sha256` is the full digest when one is published. `sha256_prefix` is the
    leading hex digits when only those are published (Meta's SAM files carry the
    first six digits of their SHA-256 in their file names, torch.hub style). With
    neither, the digest of the first download is recorded and later copies are
    checked against it (`surgery.hub.download`).
    """

    name: str
    repo_id: str
    filename: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    size_note: str = ""


OPENAI_CLIP_FILE = "open_clip_model.safetensors"

CLIP_CHECKPOINTS: dict[str, HubCheckpoint] = {
    "ViT-B/16": HubCheckpoint(
        name="ViT-B/16",
        repo_id="timm/vit_base_patch16_clip_224.openai",
        filename=OPENAI_CLIP_FILE,
        sha256="4b8699299b1e8997753c64b052ba32031449d5d853f55a039148560ee02b820f",
        size_note="about 600 MB",
    ),
    "ViT-B/32": HubCheckpoint(
        name="ViT-B/32",
        repo_id="timm/vit_base_patch32_clip_224.openai",
        filename=OPENAI_CLIP_FILE,
        sha256="e6d1bd7789aa45192b3bf90570a789b478bae1b74ebcce7eddd908e83a2b7c31",
        size_note="about 600 MB",
    ),
    "ViT-L/14": HubCheckpoint(
        name="ViT-L/14",
        repo_id="timm/vit_large_patch14_clip_224.openai",
        filename=OPENAI_CLIP_FILE,
        sha256="9ce2e8a8ebfff3793d7d375ad6d3c35cb9aebf3de7ace0fc7308accab7cd207e",
        size_note="about 1.7 GB",
    ),
    "ViT-L/14-336": HubCheckpoint(
        name="ViT-L/14-336",
        repo_id="timm/vit_large_patch14_clip_336.openai",
        filename=OPENAI_CLIP_FILE,
        size_note="about 1.7 GB",
    ),
    # OpenAI's ResNet CLIPs (open_clip's CLIP layout, the same keys as OpenAI's state dicts).
    "RN50": HubCheckpoint(name="RN50", repo_id="timm/resnet50_clip.openai", filename=OPENAI_CLIP_FILE,
                          sha256="da0baa37fb2211eee5729ab69ed587eb10d48f5b7076ceeed01552fc3d4cb4ee",
                          size_note="about 410 MB"),
    "RN101": HubCheckpoint(name="RN101", repo_id="timm/resnet101_clip.openai", filename=OPENAI_CLIP_FILE,
                           size_note="about 480 MB"),
    "RN50x4": HubCheckpoint(name="RN50x4", repo_id="timm/resnet50x4_clip.openai", filename=OPENAI_CLIP_FILE,
                            size_note="about 710 MB"),
    "RN50x16": HubCheckpoint(name="RN50x16", repo_id="timm/resnet50x16_clip.openai", filename=OPENAI_CLIP_FILE,
                             size_note="about 1.2 GB"),
    "RN50x64": HubCheckpoint(name="RN50x64", repo_id="timm/resnet50x64_clip.openai", filename=OPENAI_CLIP_FILE,
                             size_note="about 2.5 GB"),
}
DEFAULT_CLIP = "ViT-B/16"

# open_clip's own pretrained registry, by "<open_clip model>:<pretrained tag>"; any such name
# works (see surgery/hub/openclip_names.py), these are the ones offered in the app.
OPENCLIP_SUGGESTED = (
    "ViT-B-16:laion2b_s34b_b88k",
    "ViT-B-16:datacomp_xl_s13b_b90k",
    "ViT-B-16:metaclip_fullcc",
)

SAM_REPO = "ybelkada/segment-anything"
SAM_CHECKPOINTS: dict[str, HubCheckpoint] = {
    "vit_b": HubCheckpoint(
        name="vit_b", repo_id=SAM_REPO, filename="checkpoints/sam_vit_b_01ec64.pth",
        sha256_prefix="01ec64", size_note="about 375 MB",
    ),
    "vit_l": HubCheckpoint(
        name="vit_l", repo_id=SAM_REPO, filename="checkpoints/sam_vit_l_0b3195.pth",
        sha256_prefix="0b3195", size_note="about 1.2 GB",
    ),
    "vit_h": HubCheckpoint(
        name="vit_h", repo_id=SAM_REPO, filename="checkpoints/sam_vit_h_4b8939.pth",
        sha256_prefix="4b8939", size_note="about 2.6 GB",
    ),
    # SAM 2.1 (Apache 2.0): Meta's own Hub repositories and release file names (the table in
    # sam2.build_sam.HF_MODEL_ID_TO_FILENAMES). No digest is published: the first download's is recorded.
    "sam2.1_hiera_tiny": HubCheckpoint(
        name="sam2.1_hiera_tiny", repo_id="facebook/sam2.1-hiera-tiny", filename="sam2.1_hiera_tiny.pt",
        size_note="about 156 MB",
    ),
    "sam2.1_hiera_small": HubCheckpoint(
        name="sam2.1_hiera_small", repo_id="facebook/sam2.1-hiera-small", filename="sam2.1_hiera_small.pt",
        size_note="about 184 MB",
    ),
    "sam2.1_hiera_base_plus": HubCheckpoint(
        name="sam2.1_hiera_base_plus", repo_id="facebook/sam2.1-hiera-base-plus",
        filename="sam2.1_hiera_base_plus.pt", size_note="about 324 MB",
    ),
    "sam2.1_hiera_large": HubCheckpoint(
        name="sam2.1_hiera_large", repo_id="facebook/sam2.1-hiera-large", filename="sam2.1_hiera_large.pt",
        size_note="about 898 MB",
    ),
}
DEFAULT_SAM_CPU = "sam2.1_hiera_tiny"
DEFAULT_SAM_GPU = "sam2.1_hiera_large"


def default_sam_model(runs_on_gpu: bool) -> str:
    """SAM 2.1 hiera-large where the models really run on a GPU, else hiera-tiny (its encoder is several
    times faster than SAM vit_b's on a CPU). vit_h, the reference demo's SAM, is one choice away.

    The argument is where the models are placed, not whether a GPU exists: until
    models are placed on a GPU, every caller passes False.
    """
    return DEFAULT_SAM_GPU if runs_on_gpu else DEFAULT_SAM_CPU
