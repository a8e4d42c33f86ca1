"""Detecting faces and embedding them with InsightFace models on ONNX Runtime.

InsightFace provides the model-specific steps (SCRFD anchors and NMS, ArcFace alignment);
the sessions under them come from our `OnnxRuntime`, so provider and threads are decided in
one place. Every method here is blocking and is meant to run in a worker thread.
"""

import logging
import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils import face_align

from faces.model_pack import ModelPack
from faces.runtime import OnnxRuntime

log = logging.getLogger(__name__)

BoundingBox = tuple[float, float, float, float]

# Two detector passes merged by NMS: 640x640 for faces down to ~10 px in a group shot, 128x128
# for a face that fills the frame, which at 640 outgrows the largest anchors and is missed.
DETECTION_SIZES = [(128, 128), (640, 640)]
# A selfie with no face found is retried on a canvas with this much border on every side
# (as a fraction of the longer side): a chin or forehead cut by the frame then fits an anchor.
SELFIE_PADDING = 0.25


@dataclass(frozen=True)
class DetectedFace:
    bbox: BoundingBox
    det_score: float
    landmarks: np.ndarray = field(repr=False)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.bbox
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    @property
    def min_side(self) -> float:
        x1, y1, x2, y2 = self.bbox
        return min(x2 - x1, y2 - y1)


@dataclass(frozen=True)
class EmbeddedFace:
    bbox: BoundingBox
    det_score: float
    embedding: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class PhotoFaces:
    faces: list[EmbeddedFace]
    dropped: int  # beyond MAX_FACES_PER_PHOTO, the smallest ones
    rejected: int  # under the minimum detection score or face size


@dataclass(frozen=True)
class FaceLimits:
    max_faces: int = 10
    min_det_score: float = 0.5
    min_face_px: int = 20


class FaceEngine:
    """A detector and a recognizer from one model pack."""

    def __init__(self, pack: ModelPack, runtime: OnnxRuntime, limits: FaceLimits) -> None:
        self.model = pack.name
        self.limits = limits
        self._detector = SCRFD(
            model_file=str(pack.detector),
            session=runtime.session(pack.detector),
            static_shape_sessions=False,
        )
        self._detector.prepare(0, det_thresh=limits.min_det_score, input_size=DETECTION_SIZES)
        self._recognizer = ArcFaceONNX(
            model_file=str(pack.recognizer), session=runtime.session(pack.recognizer)
        )
        self.dimension = int(self._recognizer.output_shape[-1])
        log.info(
            "face engine ready: model=%s dimension=%d %s",
            self.model,
            self.dimension,
            runtime.describe(),
        )

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces above the detection threshold, largest first."""
        boxes, landmarks = self._detector.detect(image, input_size=DETECTION_SIZES)
        faces = [
            DetectedFace(
                # Boxes may reach past the frame for a face cut by its edge; report the visible part.
                bbox=clip_box((float(x1), float(y1), float(x2), float(y2)), image.shape),
                det_score=float(score),
                landmarks=points,
            )
            for (x1, y1, x2, y2, score), points in zip(boxes, landmarks, strict=True)
        ]
        return sorted(faces, key=lambda face: face.area, reverse=True)

    def embed(self, image: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per face."""
        if not faces:
            return np.empty((0, self.dimension), dtype=np.float32)
        crops = [self._align(image, face) for face in faces]
        raw = np.asarray(self._recognizer.get_feat(crops), dtype=np.float32)
        return normalise(raw)

    def index_photo(self, image: np.ndarray) -> PhotoFaces:
        """The faces of one photo worth indexing, embedded."""
        detected = self.detect(image)
        usable = [face for face in detected if face.min_side >= self.limits.min_face_px]
        kept = usable[: self.limits.max_faces]
        embeddings = self.embed(image, kept)
        faces = [
            EmbeddedFace(face.bbox, face.det_score, vector)
            for face, vector in zip(kept, embeddings, strict=True)
        ]
        return PhotoFaces(
            faces, dropped=len(usable) - len(kept), rejected=len(detected) - len(usable)
        )

    def selfie_face(self, image: np.ndarray) -> EmbeddedFace | None:
        """The largest face of a selfie, embedded, or None when it shows no face."""
        faces = self.detect(image)
        if faces:
            largest = faces[0]
            return EmbeddedFace(largest.bbox, largest.det_score, self.embed(image, [largest])[0])

        canvas, offset = pad_for_detection(image, SELFIE_PADDING)
        faces = self.detect(canvas)
        if not faces:
            return None
        largest = faces[0]
        x1, y1, x2, y2 = largest.bbox
        bbox = clip_box((x1 - offset, y1 - offset, x2 - offset, y2 - offset), image.shape)
        return EmbeddedFace(bbox, largest.det_score, self.embed(canvas, [largest])[0])

    def _align(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        with warnings.catch_warnings():
            # scikit-image deprecates the estimate() call InsightFace's alignment makes.
            warnings.simplefilter("ignore")
            aligned: np.ndarray = face_align.norm_crop(
                image, landmark=face.landmarks, image_size=self._recognizer.input_size[0]
            )
        return aligned


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Scale each row to unit L2 norm, so cosine similarity is a dot product."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: np.ndarray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def pad_for_detection(image: np.ndarray, fraction: float) -> tuple[np.ndarray, int]:
    border = max(1, int(max(image.shape[:2]) * fraction))
    canvas = cv2.copyMakeBorder(
        image, border, border, border, border, cv2.BORDER_CONSTANT, value=(0, 0, 0)
    )
    return canvas, border


def clip_box(box: BoundingBox, shape: tuple[int, ...]) -> BoundingBox:
    height, width = shape[:2]
    x1, y1, x2, y2 = box
    return (
        float(np.clip(x1, 0, width)),
        float(np.clip(y1, 0, height)),
        float(np.clip(x2, 0, width)),
        float(np.clip(y2, 0, height)),
    )
