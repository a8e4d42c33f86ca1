"""How a search splits its session's photo buckets into slices scanned side by side."""

import pytest

from storage.face_store import SCAN_BUCKETS, scan_slices


@pytest.mark.parametrize("count", range(1, SCAN_BUCKETS + 1))
def test_the_slices_cover_every_bucket_once_in_nearly_equal_parts(count: int) -> None:
    slices = scan_slices(count)

    covered = [bucket for first, last in slices for bucket in range(first, last + 1)]
    assert covered == list(range(SCAN_BUCKETS))
    sizes = {last - first + 1 for first, last in slices}
    assert len(slices) == count
    assert max(sizes) - min(sizes) <= 1


def test_two_slices_are_the_two_halves() -> None:
    assert scan_slices(2) == [(0, 31), (32, 63)]


@pytest.mark.parametrize("count", [0, -1, SCAN_BUCKETS + 1])
def test_a_count_outside_1_to_the_bucket_count_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match="1 to 64 scans"):
        scan_slices(count)
