"""course_lib.editing: the pieces of lesson 11's edit measurements, on made-up pictures and a made-up judge
(the measurements on the shipped mini-SD are tests/test_inversion.py's slow targets)."""

import pytest
import torch

from course_lib import editing
from course_lib.captions import COLORS
from course_lib.inversion import drawn_pictures
from course_lib.orange import EXTENDED_ATTRIBUTES, EXTENDED_JUDGE_HEADS


def test_shape_mask_iou_ignores_colour_and_counts_overlap():
    a = -torch.ones(3, 3, 8, 8)
    b = a.clone()
    a[:, 0, 2:6, 2:6] = 1  # a red 4x4 square
    b[0, 2, 2:6, 2:6] = 0.5  # the same square in blue: IoU 1
    b[1, 1, 4:8, 4:8] = 1  # moved by 2 px each way: 4 shared of 28 painted
    assert editing.shape_mask_iou(a, b).tolist() == pytest.approx([1.0, 4 / 28, 0.0])


def test_edit_targets_are_another_colour_and_repeatable():
    _, attributes = drawn_pictures(30, seed=2, shapes=editing.EDIT_SHAPES)
    targets = editing.edit_targets(attributes)
    assert targets == editing.edit_targets(attributes) and set(targets) <= set(COLORS)
    assert all(t != a["color"] for t, a in zip(targets, attributes)) and len(set(targets)) > 2
    prompts = editing.edited_prompts(attributes, targets)
    assert all(f" {t} {a['shape']}" in p for p, t, a in zip(prompts, targets, attributes))


class ReadsTheMeanColour(torch.nn.Module):
    """A made-up 7-colour judge: shape from the picture's first pixel row, colour by channel means."""

    def __init__(self, readings):
        super().__init__()
        self.readings = readings  # picture index (its value at [0, 0, 0, 0]) -> {"shape", "color", ...}

    def forward(self, images):
        logits = []
        for image in images:
            reading = self.readings[int(round(image[0, 0, 0].item() * 10))]
            row = []
            for name, count in EXTENDED_JUDGE_HEADS.items():
                head = torch.zeros(count)
                head[EXTENDED_ATTRIBUTES[name].index(reading[name])] = 1
                row.append(head)
            logits.append(torch.cat(row))
        return torch.stack(logits)


def test_edit_report_asks_the_new_colour_with_the_drawn_shape_and_position():
    drawn = [{"shape": "circle", "color": "red", "size": "small", "position": "center"}] * 4
    targets = ["blue"] * 4
    source_reading = dict(drawn[0])
    edits_read = [dict(drawn[0], color="blue"),                      # a success
                  dict(drawn[0], color="red"),                       # colour unchanged
                  dict(drawn[0], color="blue", shape="square"),      # shape lost
                  dict(drawn[0], color="blue", size="large")]        # size lost: success, not with size
    readings = {0: source_reading, **{i + 1: r for i, r in enumerate(edits_read)}}
    judge = ReadsTheMeanColour(readings)
    sources = torch.zeros(4, 3, 8, 8)
    edits = torch.stack([torch.full((3, 8, 8), (i + 1) / 10) for i in range(4)])
    report = editing.edit_report(judge, sources, edits, drawn, targets)
    assert report["success"] == [True, False, False, True]
    assert report["edit_success"]["successes"] == 2 and report["edit_success_with_size"]["successes"] == 1
    assert report["color_changed"]["successes"] == 3 and report["shape_kept"]["successes"] == 3
    low, high = report["edit_success"]["interval"]
    assert low < 0.5 < high and report["edit_success"]["count"] == 4
