"""Detecting faces and embedding them with InsightFace models on ONNX Runtime.

InsightFace provides the model-specific steps (SCRFD anchors and NMS, ArcFace alignment);
the sessions under them come from our `OnnxRuntime`, so provider and threads are decided in
one place. Every method here is blocking and is meant to run in a worker thread.
"""

import logging
import warnings
from dataclasses import dataclass, field
from math import ceil

import cv2
import numpy as np
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils import face_align

from faces.decoding import EncodedPhoto
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
# Large JPEGs are decoded at a reduced size with a long side of at least this: 12 and 24 MP
# photos decode at half size (a 24 MP JPEG in 82 ms instead of 253 ms), still three times what
# the 640 px detector looks at, so detection finds the same faces.
DETECTION_DECODE_LONG_SIDE_PX = 2000
# A face smaller than this in the reduced decode is embedded from a sharper decode instead.
# Measured on the 12-24 MP benchmark photos: embeddings from the reduced decode stay at cosine
# >= 0.93 (mean 0.985) to those of a full decode, and indexing is 1.6x faster.
RECOGNITION_MIN_FACE_PX = 40


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

    def scaled(self, factor: float) -> "DetectedFace":
        """The same face in an image `factor` times as large."""
        return DetectedFace(scale_box(self.bbox, factor), self.det_score, self.landmarks * factor)


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


# Pixels decoded for detection and their scale to the full-size upright photo.
DecodedPhoto = tuple[np.ndarray, float]


def decode_for_detection(photo: EncodedPhoto) -> DecodedPhoto:
    """The photo decoded at the size detection needs: a long side of at least
    DETECTION_DECODE_LONG_SIDE_PX, or full size when it is smaller."""
    return photo.decode(DETECTION_DECODE_LONG_SIDE_PX)


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
        """The faces of one decoded photo worth indexing, embedded."""
        kept, dropped, rejected = self._select(self.detect(image), scale=1.0)
        return self._embedded(image, kept, dropped, rejected, scale=1.0)

    def index_encoded(self, photo: EncodedPhoto) -> PhotoFaces:
        """The faces of one photo, decoding no more of it than detection and recognition need.

        Boxes are reported in pixels of the full-size upright photo, whatever was decoded.
        """
        return self.index_decoded(photo, decode_for_detection(photo))

    def index_decoded(self, photo: EncodedPhoto, decoded: "DecodedPhoto") -> PhotoFaces:
        """`index_encoded` on a photo already decoded by `decode_for_detection`, which can run
        in another thread meanwhile: decoding the next photo then overlaps this inference."""
        pixels, scale = decoded
        kept, dropped, rejected = self._select(self.detect(pixels), scale)
        smallest = min((face.min_side for face in kept), default=RECOGNITION_MIN_FACE_PX)
        if scale < 1.0 and smallest < RECOGNITION_MIN_FACE_PX:
            wanted = ceil(photo.long_side * scale * RECOGNITION_MIN_FACE_PX / smallest)
            sharper, sharper_scale = photo.decode(min(wanted, photo.long_side))
            kept = [face.scaled(sharper_scale / scale) for face in kept]
            pixels, scale = sharper, sharper_scale
        return self._embedded(pixels, kept, dropped, rejected, scale)

    def _select(
        self, detected: list[DetectedFace], scale: float
    ) -> tuple[list[DetectedFace], int, int]:
        """Faces big enough (in full-size pixels), largest first, at most MAX_FACES_PER_PHOTO."""
        usable = [face for face in detected if face.min_side / scale >= self.limits.min_face_px]
        kept = usable[: self.limits.max_faces]
        return kept, len(usable) - len(kept), len(detected) - len(usable)

    def _embedded(
        self, image: np.ndarray, kept: list[DetectedFace], dropped: int, rejected: int, scale: float
    ) -> PhotoFaces:
        embeddings = self.embed(image, kept)
        faces = [
            EmbeddedFace(scale_box(face.bbox, 1.0 / scale), face.det_score, vector)
            for face, vector in zip(kept, embeddings, strict=True)
        ]
        return PhotoFaces(faces, dropped=dropped, rejected=rejected)

    def selfie_encoded(self, photo: EncodedPhoto) -> EmbeddedFace | None:
        """`selfie_face` on a selfie decoded at reduced size, its box in full-size pixels."""
        pixels, scale = decode_for_detection(photo)
        face = self.selfie_face(pixels)
        if face is None:
            return None
        return EmbeddedFace(scale_box(face.bbox, 1.0 / scale), face.det_score, face.embedding)

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


def scale_box(box: BoundingBox, factor: float) -> BoundingBox:
    x1, y1, x2, y2 = box
    return (x1 * factor, y1 * factor, x2 * factor, y2 * factor)


def clip_box(box: BoundingBox, shape: tuple[int, ...]) -> BoundingBox:
    height, width = shape[:2]
    x1, y1, x2, y2 = box
    return (
        float(np.clip(x1, 0, width)),
        float(np.clip(y1, 0, height)),
        float(np.clip(x2, 0, width)),
        float(np.clip(y2, 0, height)),
    )
