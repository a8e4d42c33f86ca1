"""The environment the Makefile builds: one OpenCV, one ONNX Runtime, the models on disk."""

from importlib import metadata

from faces.model_pack import bundled_pack

OPENCV_DISTRIBUTIONS = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)
ONNX_RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


def installed(names: tuple[str, ...]) -> list[str]:
    found = []
    for name in names:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def test_exactly_one_opencv_distribution_the_headless_one_is_installed() -> None:
    assert installed(OPENCV_DISTRIBUTIONS) == ["opencv-python-headless"]


def test_exactly_one_onnx_runtime_distribution_is_installed() -> None:
    assert len(installed(ONNX_RUNTIME_DISTRIBUTIONS)) == 1


def test_bundled_model_pack_is_on_disk_without_any_download() -> None:
    pack = bundled_pack()

    assert pack.name == "buffalo_s"
    assert pack.detector.stat().st_size > 1_000_000
    assert pack.recognizer.stat().st_size > 10_000_000
