"""Tests of course_lib.metrics.judge_attribute_accuracy: the shapes judge's four heads, graded."""

import pytest
import torch
from torch import nn

from course_lib.captions import ATTRIBUTES
from course_lib.metrics import judge_attribute_accuracy
from course_lib.pretrained import available_checkpoints, load_course_model

SIZES = [len(values) for values in ATTRIBUTES.values()]  # 3, 6, 2, 5: the heads' widths


class FakeJudge(nn.Module):
    """Reads each attribute's id from pixel (0, k, 0) and puts the largest logit of head k there."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        assert not self.training, "the judge must run in eval mode"
        heads = []
        for k, size in enumerate(SIZES):
            ids = x[:, 0, k, 0].round().long()
            heads.append(nn.functional.one_hot(ids, size).float() * self.scale)
        return torch.cat(heads, dim=1)  # (B, 16)


def pictures(ids: dict[str, torch.Tensor]) -> torch.Tensor:
    count = len(ids["shape"])
    x = torch.zeros(count, 3, 64, 64)
    for k, name in enumerate(ATTRIBUTES):
        x[:, 0, k, 0] = ids[name].float()
    return x


def test_accuracy_per_attribute_is_the_share_read_right():
    truth = {"shape": torch.tensor([0, 1, 2, 0]), "color": torch.tensor([5, 4, 3, 2]),
             "size": torch.tensor([0, 1, 0, 1]), "position": torch.tensor([4, 3, 2, 1])}
    shown = dict(truth, color=torch.tensor([5, 4, 0, 0]), position=torch.tensor([4, 0, 2, 1]))
    accuracy = judge_attribute_accuracy(FakeJudge().eval(), pictures(shown), truth, batch_size=3)
    assert accuracy == {"shape": 1.0, "color": 0.5, "size": 1.0, "position": 0.75}


def test_missing_or_out_of_range_attributes_are_explained():
    truth = {"shape": torch.tensor([0]), "color": torch.tensor([0]), "size": torch.tensor([0]),
             "position": torch.tensor([0])}
    judge = FakeJudge()
    with pytest.raises(ValueError, match="no 'size' entry"):
        judge_attribute_accuracy(judge, pictures(truth), {k: v for k, v in truth.items() if k != "size"})
    with pytest.raises(ValueError, match=r"attributes\['color'\] must lie in \[0, 5\]"):
        judge_attribute_accuracy(judge, pictures(truth), dict(truth, color=torch.tensor([6])))


@pytest.mark.skipif("shapes-judge" not in available_checkpoints(), reason="needs the shapes-judge checkpoint")
def test_the_shipped_judge_reads_test_pictures():
    from course_lib.datasets import shapes_attributes, shapes_tensors

    judge, _ = load_course_model("shapes-judge")
    images, _ = shapes_tensors("test", num_images=64)
    accuracy = judge_attribute_accuracy(judge, images, shapes_attributes("test", num_images=64))
    assert set(accuracy) == set(ATTRIBUTES) and min(accuracy.values()) >= 0.95
