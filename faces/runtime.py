"""The one place that talks to ONNX Runtime: which execution provider, how many threads.

CUDA is taken when it is available and asked for; asking for it explicitly and not getting it
is an error, never a silent fall back to a CPU that is a hundred times slower.
"""

import logging
import os
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from schemas.errors import ModelUnavailable

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class OnnxRuntime:
    """Creates inference sessions that all share one provider choice and thread budget."""

    def __init__(
        self, providers: Literal["auto", "cuda", "cpu"] = "auto", threads: int = 0
    ) -> None:
        self.requested = providers
        self.providers = self._choose(providers)
        self.threads = threads or os.cpu_count() or 1
        # Model files declare a batch of 1 on their output; ORT warns on every batched call.
        ort.set_default_logger_severity(3)

    @staticmethod
    def _choose(requested: str) -> list[str]:
        available = ort.get_available_providers()
        if requested == "cpu":
            return [CPU]
        if CUDA in available:
            return [CUDA, CPU]
        if requested == "cuda":
            raise ModelUnavailable(
                f"ONNX_PROVIDERS=cuda, but this onnxruntime offers only {available}: "
                "install the 'gpu' extra (onnxruntime-gpu) and the CUDA libraries"
            )
        return [CPU]

    def session(self, model_path: Path) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle pool threads sleep instead of spinning between operators: a spinning thread takes
        # the core the event loop, the decoder and the other model need. Measured with
        # `python -m bench.indexing`: 23.5 photos/s instead of 16.1 in process on the small
        # fixtures, 17.0 instead of 10.7 through the whole pipeline.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(model_path), options, providers=self.providers)
        except Exception as error:
            raise ModelUnavailable(f"cannot load model {model_path}: {error}") from error

        active = session.get_providers()
        if self.requested == "cuda" and CUDA not in active:
            raise ModelUnavailable(
                f"ONNX_PROVIDERS=cuda, but {model_path.name} loaded on {active}: "
                "the CUDA provider is installed and failed to start (check CUDA and cuDNN)"
            )
        if self.requested == "auto" and CUDA in self.providers and CUDA not in active:
            log.warning("CUDA provider failed to start for %s; running on CPU", model_path.name)
        return session

    def describe(self) -> str:
        return f"providers={','.join(self.providers)} threads={self.threads}"
