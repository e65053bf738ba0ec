"""Task keep masks: pixel arguments mapped to code positions, and requests outside the media refused."""
import pytest
import torch

from model.tasks import keep_first_frames, keep_outside_region, keep_top_rows


def test_masks():
    keep = keep_first_frames((4, 2, 3), 2)
    assert keep[:2].all() and not keep[2:].any()
    keep = keep_top_rows((1, 8, 8), pixel_rows=20, downsample=8)  # 20 px → 2 whole code rows
    assert keep[0, :2].all() and not keep[0, 2:].any()
    keep = keep_outside_region((1, 8, 8), (10, 0, 17, 8), downsample=8)  # rows 1..2, column 0 regenerated
    expected = torch.ones(1, 8, 8, dtype=torch.bool)
    expected[0, 1:3, 0:1] = False
    assert torch.equal(keep, expected)


@pytest.mark.parametrize("call, match", [
    (lambda: keep_first_frames((4, 2, 3), 4), "frame index 4 is outside the video"),
    (lambda: keep_first_frames((4, 2, 3), 0), "frame index 0"),
    (lambda: keep_top_rows((1, 8, 8), 4, 8), "at least one code row"),
    (lambda: keep_top_rows((1, 8, 8), 64, 8), "leave one"),
    (lambda: keep_outside_region((1, 8, 8), (0, 0, 65, 10), 8), "inside the 64x64 image"),
    (lambda: keep_outside_region((1, 8, 8), (10, 10, 10, 20), 8), "non-empty rectangle"),
])
def test_requests_outside_the_media_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
