"""The checks of lessons 01-09 speak Chinese after course_lib.set_language("zh"): the verdict, the hint and
what was expected against what was received.

One cheap check per lesson (no model is loaded), a right answer and a typical mistake each. That every
message has a Chinese text at all is tests/test_translations.py's job; here the checks are run, so a
message printed without tr(), or a verdict assembled around an untranslated piece, shows up. The last
test does the same for the tokenizer's warnings, which lesson 07 prints.
"""

import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import course_lib
from course_lib import exercises

from _exercise_harness import run

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture
def chinese():
    course_lib.set_language("zh")
    yield
    course_lib.set_language("en")


def _decode(vae, latents):
    return (vae.decode(latents / vae.config.scaling_factor) / 2 + 0.5).clamp(0, 1)


# lesson: (check, a right answer, a typical mistake, a word of the hint the mistake gets, in Chinese)
CASES = {
    "01": (exercises.check_q_sample,
           lambda x0, t, noise, ab: ab[t].view(-1, 1, 1, 1).sqrt() * x0 + (1 - ab[t].view(-1, 1, 1, 1)).sqrt() * noise,
           lambda x0, t, noise, ab: ab[t].view(-1, 1, 1, 1).sqrt() * x0 - (1 - ab[t].view(-1, 1, 1, 1)).sqrt() * noise,
           "检查符号"),
    "02": (exercises.check_pred_x0,
           lambda x_t, eps, a: (x_t - (1 - a).sqrt() * eps) / a.sqrt(),
           lambda x_t, eps, a: (x_t - (1 - a).sqrt() * eps) * a.sqrt(),
           "而不是乘"),
    "03": (exercises.check_tweedie,
           lambda x_t, score, a: (x_t + (1 - a) * score) / a.sqrt(),
           lambda x_t, score, a: (x_t + score) / a.sqrt(),
           "噪声的方差"),
    "04": (exercises.check_bayes_score,
           lambda score, grad, scale: score + scale * grad,
           lambda score, grad, scale: score + grad,
           "漏乘了权重"),
    "05": (exercises.check_cfg,
           lambda u, c, s: u + s * (c - u),
           lambda u, c, s: c + s * (c - u),
           "diffusers 的约定"),
    "06": (exercises.check_reparameterise,
           lambda mean, logvar, eps: mean + (0.5 * logvar).exp() * eps,
           lambda mean, logvar, eps: mean + eps,
           "没有乘以 σ"),
    "07": (exercises.check_cross_attention,
           lambda q, k, v: F.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v,
           lambda q, k, v: F.softmax(q @ k.transpose(-2, -1), dim=-1) @ v,
           "漏了缩放"),
    "08": (exercises.check_decode_latents,
           _decode,
           lambda vae, latents: (vae.decode(latents) / 2 + 0.5).clamp(0, 1),
           "除以缩放因子"),
    "09": (exercises.check_euler_step,
           lambda x, eps, sigma, sigma_next: x + (sigma_next - sigma) * eps,
           lambda x, eps, sigma, sigma_next: x + (sigma - sigma_next) * eps,
           "检查符号"),
}


@pytest.mark.parametrize("lesson", sorted(CASES))
def test_a_right_answer_is_correct_in_chinese(lesson, chinese, capsys):
    check, right, _, _ = CASES[lesson]
    verdict, out = run(check, right, capsys)
    assert verdict is True, out
    assert out.startswith("✅ 正确："), out
    assert CJK.search(out.removeprefix("✅ 正确：")), f"the success message itself is not in Chinese: {out}"


@pytest.mark.parametrize("lesson", sorted(CASES))
def test_a_mistake_gets_a_chinese_verdict_comparison_and_hint(lesson, chinese, capsys):
    check, _, wrong, hint = CASES[lesson]
    verdict, out = run(check, wrong, capsys)
    assert verdict is False
    lines = out.strip().splitlines()
    assert lines[0].startswith("❌ 还不对：") and "不对" in lines[0], out          # what is wrong, where
    assert re.search(r"应为 .+，实际得到 ", out), out                                 # expected against received
    assert lines[-1].startswith("   提示：") and hint in lines[-1], out              # the mistake's own hint
    for english in ("Not yet", "Hint", "expected", "is not right", "for x", "shape"):
        assert english not in out, f"{english!r} left in English: {out}"


def test_english_is_unchanged_after_chinese(capsys):
    """The language is read when a check runs: the same check prints English again after switching back."""
    check, _, wrong, _ = CASES["05"]
    english = run(check, wrong, capsys)[1]
    course_lib.set_language("zh")
    try:
        assert run(check, wrong, capsys)[1] != english
    finally:
        course_lib.set_language("en")
    assert run(check, wrong, capsys)[1] == english
    assert english.startswith("❌ Not yet: the guided eps is not right for eps of shape")


def _t_not_repeated(model, x, t, labels, null_label):
    labels_in = torch.cat([torch.full_like(labels, null_label), labels])
    return model(torch.cat([x, x]), t, class_labels=labels_in).chunk(2)


def _one_copy_of_the_latents(unet, latents, t, prompt_embeds, negative_prompt_embeds, guidance_scale):
    return unet(latents, t, encoder_hidden_states=torch.cat([negative_prompt_embeds, prompt_embeds]))


@pytest.mark.parametrize("check, fn, hint", [
    (exercises.check_batch_of_two, _t_not_repeated, "t_in = torch.cat([t, t])"),
    (exercises.check_guided_noise, _one_copy_of_the_latents, "torch.cat([latents] * 2)"),
])
def test_a_stand_in_model_complains_in_chinese_and_the_hint_still_finds_the_cause(check, fn, hint, chinese, capsys):
    """The stand-in models' errors are translated, so the hints read the error's reason, not its words."""
    verdict, out = run(check, fn, capsys)
    assert verdict is False
    first, second = out.strip().splitlines()
    assert first.startswith("❌ 你的函数抛出了 ValueError：") and CJK.search(first.split("：", 1)[1]), out
    assert second.startswith("   提示：") and hint in second, out


def test_the_tokenizers_warnings_speak_the_lessons_language():
    """Lesson 07 prints what tokenize_prompts warns about a word outside the vocabulary and a prompt too long."""
    from course_lib.nn.text import build_caption_tokenizer, tokenize_prompts

    tokenizer = build_caption_tokenizer(model_max_length=10)
    prompts = ["a large purple circle", "a large red circle in the top left and a small blue square in the bottom right"]

    def warned():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tokenize_prompts(tokenizer, prompts)
        return [str(w.message) for w in caught]

    english = warned()
    assert [m.split(" ")[:3] for m in english] == [["These", "words", "are"], ["The", "following", "part"]], english
    course_lib.set_language("zh")
    try:
        chinese = warned()
    finally:
        course_lib.set_language("en")
    assert chinese[0].startswith("这些词不在分词器的词表里") and "purple" in chinese[0], chinese
    assert chinese[1].startswith("输入的以下部分被截断了") and "最多只能处理 10 个词元" in chinese[1], chinese
