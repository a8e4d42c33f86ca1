"""Measure the selfie-search similarity threshold on the labelled test photos.

Every single-identity photo in tests/fixtures/faces is used as a selfie: its largest face
(`FaceEngine.selfie_face`) is the query. Every other photo is indexed as the product indexes it
(`FaceEngine.index_photo`) and scores the cosine similarity of its best face, so each candidate
photo is one row, as in a search result. Copies of the query (resized or cropped versions of the
same original photo) are left out: finding them says nothing about recognising a person.

A candidate is relevant when the query's identity is among the candidate's labelled identities.
For each threshold from 0.10 to 0.60 (a photo matches when its score >= the threshold) the
script prints micro-averaged true and false positives, false negatives, precision and recall,
and the number of queries that got any wrong photo; then the recommended threshold (the lowest
one without any wrong photo that keeps the best recall) and the extreme scores seen.

Run from the repository root:

    python -m tools.measure_threshold
"""

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faces.decoding import decode_image
from faces.engine import FaceEngine, FaceLimits
from faces.model_pack import locate_model_pack
from faces.runtime import OnnxRuntime
from streams.settings import Settings

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "faces"
LABELS = FIXTURES / "labels.csv"
THRESHOLDS = [round(0.10 + 0.05 * step, 2) for step in range(11)]  # 0.10 .. 0.60

# The notes name the original of a copy as "derived from X", "same original photo as X" or
# "same photo as X". Only a name that is a labelled file counts: notes also say things like
# "same photo as RGBA PNG", which is no file.
SAME_PHOTO = re.compile(r"(?:derived from|same original photo as|same photo as)\s+([\w.\-]+)")


@dataclass(frozen=True)
class LabelledPhoto:
    file: str
    identities: frozenset[str]
    notes: str


@dataclass(frozen=True)
class Score:
    query: str
    candidate: str
    similarity: float
    relevant: bool


@dataclass(frozen=True)
class Row:
    threshold: float
    true_positives: int
    false_positives: int
    false_negatives: int
    queries_with_wrong_photo: int

    @property
    def precision(self) -> float | None:
        returned = self.true_positives + self.false_positives
        return self.true_positives / returned if returned else None

    @property
    def recall(self) -> float | None:
        relevant = self.true_positives + self.false_negatives
        return self.true_positives / relevant if relevant else None


def read_labels(path: Path) -> list[LabelledPhoto]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            LabelledPhoto(
                file=row["file"],
                identities=frozenset(name.strip() for name in row["identity"].split(";")),
                notes=row["notes"],
            )
            for row in csv.DictReader(handle)
        ]


def original_groups(photos: list[LabelledPhoto]) -> dict[str, str]:
    """Map each file to a representative of its original photo (copies share one)."""
    files = {photo.file for photo in photos}
    parent = {file: file for file in files}

    def root(file: str) -> str:
        while parent[file] != file:
            file = parent[file]
        return file

    for photo in photos:
        for name in SAME_PHOTO.findall(photo.notes):
            name = name.rstrip(".")
            if name in files:
                parent[root(photo.file)] = root(name)
    return {file: root(file) for file in files}


def score_all(engine: FaceEngine, photos: list[LabelledPhoto], settings: Settings) -> list[Score]:
    groups = original_groups(photos)
    images = {
        photo.file: decode_image(
            (FIXTURES / photo.file).read_bytes(),
            max_pixels=settings.max_image_pixels,
            min_side_px=settings.min_image_side_px,
        )
        for photo in photos
    }
    indexed = {file: engine.index_photo(image) for file, image in images.items()}

    scores: list[Score] = []
    for query in photos:
        if len(query.identities) != 1:
            continue
        selfie = engine.selfie_face(images[query.file])
        if selfie is None:
            logging.warning("no face in selfie %s; skipped", query.file)
            continue
        (identity,) = query.identities
        for candidate in photos:
            if groups[candidate.file] == groups[query.file]:
                continue  # the query itself or a copy of the same original photo
            relevant = identity in candidate.identities
            faces = indexed[candidate.file].faces
            if not faces:
                logging.warning("no indexable face in %s", candidate.file)
                similarity = -1.0  # never returned at any threshold
            else:
                matrix = np.stack([face.embedding for face in faces])
                similarity = float(np.max(matrix @ selfie.embedding))
            scores.append(Score(query.file, candidate.file, similarity, relevant))
    return scores


def evaluate(scores: list[Score], threshold: float) -> Row:
    returned = [score for score in scores if score.similarity >= threshold]
    wrong = [score for score in returned if not score.relevant]
    true_positives = len(returned) - len(wrong)
    return Row(
        threshold=threshold,
        true_positives=true_positives,
        false_positives=len(wrong),
        false_negatives=sum(score.relevant for score in scores) - true_positives,
        queries_with_wrong_photo=len({score.query for score in wrong}),
    )


def recommend(rows: list[Row]) -> Row | None:
    """Among thresholds with no wrong photo for any query: the lowest with the best recall."""
    clean = [row for row in rows if row.false_positives == 0]
    if not clean:
        return None
    best_recall = max(row.recall or 0.0 for row in clean)
    best = [row for row in clean if (row.recall or 0.0) == best_recall]
    return min(best, key=lambda row: row.threshold)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| threshold | TP | FP | FN | precision | recall | queries with a wrong photo |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {row.threshold:.2f} | {row.true_positives} | {row.false_positives} | "
        f"{row.false_negatives} | {fmt(row.precision)} | {fmt(row.recall)} | "
        f"{row.queries_with_wrong_photo} |"
        for row in rows
    ]
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The product's defaults, not the environment, so every run measures the same thing.
    settings = Settings.model_construct()
    limits = FaceLimits(
        max_faces=settings.max_faces_per_photo,
        min_det_score=settings.min_detection_score,
        min_face_px=settings.min_face_size_px,
    )
    pack = locate_model_pack(settings.face_model, settings.insightface_root)
    engine = FaceEngine(pack, OnnxRuntime(settings.onnx_providers, settings.onnx_threads), limits)

    photos = read_labels(LABELS)
    scores = score_all(engine, photos, settings)
    rows = [evaluate(scores, threshold) for threshold in THRESHOLDS]
    queries = len({score.query for score in scores})

    print(f"\nModel pack: {engine.model}; {queries} queries, {len(scores)} query-photo pairs\n")
    print(markdown_table(rows))

    chosen = recommend(rows)
    if chosen is None:
        print("\nNo threshold in the range returns no wrong photo for every query.")
    else:
        print(
            f"\nRecommended threshold: {chosen.threshold:.2f} "
            f"(precision 1.0, recall {fmt(chosen.recall)})"
        )

    impostors = [score for score in scores if not score.relevant]
    genuines = [score for score in scores if score.relevant]
    if impostors:
        top = max(impostors, key=lambda score: score.similarity)
        print(
            f"Largest different-person similarity: {top.similarity:.3f} "
            f"(query {top.query}, photo {top.candidate})"
        )
    if genuines:
        low = min(genuines, key=lambda score: score.similarity)
        print(
            f"Smallest same-person similarity: {low.similarity:.3f} "
            f"(query {low.query}, photo {low.candidate})"
        )


if __name__ == "__main__":
    main()
