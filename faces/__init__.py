"""Finding faces in photos and turning them into embeddings: image decoding with its limits,
the ONNX Runtime adapter, and the InsightFace detector and recognizer on top of it."""
