"""Tests of course_lib.metrics.shapes_judge_report given integer ids, as datasets.shapes_attributes gives them."""

import pytest
import torch
from torch import nn

from course_lib.captions import ATTRIBUTES
from course_lib.metrics import shapes_judge_report
from course_lib.pretrained import available_checkpoints, load_course_model

SIZES = [len(values) for values in ATTRIBUTES.values()]  # 3, 6, 2, 5: the heads' widths


class FakeJudge(nn.Module):
    """Reads each attribute's id from pixel (0, k, 0) (times 10) and puts the largest logit of head k there."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        assert not self.training, "the judge must run in eval mode"
        heads = []
        for k, size in enumerate(SIZES):
            ids = (x[:, 0, k, 0] * 10).round().long()
            heads.append(nn.functional.one_hot(ids, size).float() * self.scale)
        return torch.cat(heads, dim=1)  # (B, 16)


def pictures(ids: dict[str, torch.Tensor]) -> torch.Tensor:
    count = len(ids["shape"])
    x = torch.zeros(count, 3, 64, 64)
    for k, name in enumerate(ATTRIBUTES):
        x[:, 0, k, 0] = ids[name].float() / 10  # inside [-1, 1]: the report clamps pictures
    return x


def test_accuracy_per_attribute_is_the_share_read_right():
    truth = {"shape": torch.tensor([0, 1, 2, 0]), "color": torch.tensor([5, 4, 3, 2]),
             "size": torch.tensor([0, 1, 0, 1]), "position": torch.tensor([4, 3, 2, 1])}
    shown = dict(truth, color=torch.tensor([5, 4, 0, 0]), position=torch.tensor([4, 0, 2, 1]))
    accuracy = shapes_judge_report(FakeJudge(), pictures(shown), truth, batch_size=3)
    assert accuracy == {"shape": 1.0, "color": 0.5, "size": 1.0, "position": 0.75, "all": 0.25,
                        "color_and_shape": 0.5}


def test_missing_attributes_count_as_right_and_out_of_range_ids_are_explained():
    truth = {"shape": torch.tensor([0]), "color": torch.tensor([0]), "size": torch.tensor([0]),
             "position": torch.tensor([0])}
    judge = FakeJudge()
    shown = pictures(dict(truth, size=torch.tensor([1])))
    assert shapes_judge_report(judge, shown, {k: v for k, v in truth.items() if k != "size"})["all"] == 1.0
    with pytest.raises(ValueError, match=r"wanted\['color'\] must lie in \[0, 5\]"):
        shapes_judge_report(judge, pictures(truth), dict(truth, color=torch.tensor([6])))


@pytest.mark.skipif("shapes-judge" not in available_checkpoints(), reason="needs the shapes-judge checkpoint")
def test_the_shipped_judge_reads_test_pictures():
    from course_lib.datasets import shapes_attributes, shapes_tensors

    judge, _ = load_course_model("shapes-judge")
    images, _ = shapes_tensors("test", num_images=64)
    accuracy = shapes_judge_report(judge, images, shapes_attributes("test", num_images=64))
    assert min(accuracy[name] for name in ATTRIBUTES) >= 0.95
