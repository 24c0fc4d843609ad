"""Tests of course_lib.pipeline: StableDiffusion.

Equivalence with diffusers' StableDiffusionPipeline (tiny random weights, float32, every sampler,
with and without guidance and negative prompts, the same latents or the same seed), loading
from the course's checkpoints, from a diffusers folder and from a diffusers pipeline, the
guidance sweep, and every input error.
"""

import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from course_lib.checkpoints import load_checkpoint
from course_lib.limits import LATENT_POSITIONS_VARIABLE, MEMORY_CAP_VARIABLE, ResourceLimitError
from course_lib.nn.text import build_caption_tokenizer
from course_lib.nn.unet import UNet2DConditionModel
from course_lib.nn.vae import AutoencoderKL
from course_lib.pipeline import SD_REPO_ID, StableDiffusion

from _minisd import IMAGE_SIZE, make_mini_sd

transformers = pytest.importorskip("transformers")

TOL = 1e-4  # max abs difference of the np images (values in [0, 1])
PROMPT = "a large red circle in the center"


@pytest.fixture(scope="module")
def mini_sd_folder(tmp_path_factory):
    return make_mini_sd(tmp_path_factory.mktemp("mini-sd"))


@pytest.fixture(scope="module")
def pipe(mini_sd_folder):
    pipe = StableDiffusion.from_course("mini-sd", directory=mini_sd_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def noise(pipe, batch_size, seed=0, size=IMAGE_SIZE):
    g = torch.Generator().manual_seed(seed)
    f = pipe.vae_scale_factor
    return torch.randn(batch_size, pipe.unet.config.in_channels, size // f, size // f, generator=g)


# ----------------------------------------------------------------------------------------------
# The mini Stable Diffusion of the course


def test_from_course_builds_the_four_parts(pipe, mini_sd_folder):
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, transformers.CLIPTextModel)
    assert pipe.schedule.kind == "scaled_linear" and pipe.schedule.num_train_timesteps == 1000
    assert pipe.vae.config.scaling_factor == 0.5  # the VAE's own, measured one in the real checkpoint
    assert (pipe.steps_offset, pipe.set_alpha_to_one, pipe.timestep_spacing) == (1, False, None)
    assert pipe.vae_scale_factor == 2 and pipe.default_size == (IMAGE_SIZE, IMAGE_SIZE)
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32

    # the text encoder is the CLIPModel's text tower: same outputs
    state_dict, config = load_checkpoint(mini_sd_folder / "shapes-clip")
    clip = transformers.CLIPModel(transformers.CLIPConfig.from_dict(config["network_config"])).eval()
    clip.load_state_dict(state_dict)
    ids = pipe.tokenizer(["a red circle", ""], padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = clip.text_model(input_ids=ids).last_hidden_state
        got = pipe.text_encoder(input_ids=ids).last_hidden_state
    assert torch.equal(got, want)


def test_from_course_reads_the_checkpoint_dir_variable_and_falls_back_to_the_built_tokenizer(
        mini_sd_folder, tmp_path, monkeypatch):
    for name in ("shapes-clip", "shapes-vae", "shapes-ldm"):  # no shapes-tokenizer/ folder
        for suffix in (".safetensors", ".json"):
            (tmp_path / f"{name}{suffix}").symlink_to(mini_sd_folder / f"{name}{suffix}")
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(tmp_path))
    pipe = StableDiffusion.from_course("mini-sd")
    assert pipe.tokenizer.get_vocab() == build_caption_tokenizer().get_vocab()


def test_missing_checkpoints_name_the_files_and_the_commands(tmp_path, mini_sd_folder):
    with pytest.raises(ValueError, match=r"shapes-vae.safetensors.*shapes-ldm.json.*python -m course_lib train "
                                         r"shapes-vae; python -m course_lib train shapes-clip; "
                                         r"python -m course_lib train shapes-ldm"):
        StableDiffusion.from_course("mini-sd", directory=tmp_path)
    for name in ("shapes-clip", "shapes-vae"):
        for suffix in (".safetensors", ".json"):
            (tmp_path / f"{name}{suffix}").symlink_to(mini_sd_folder / f"{name}{suffix}")
    with pytest.raises(ValueError, match=r"missing shapes-ldm.safetensors, shapes-ldm.json\. Make them, in this "
                                         r"order: python -m course_lib train shapes-ldm \("):
        StableDiffusion.from_course("mini-sd", directory=tmp_path)
    with pytest.raises(ValueError, match="Unknown course pipeline 'sd-xl'"):
        StableDiffusion.from_course("sd-xl", directory=tmp_path)


def test_same_seed_same_images_and_output_types(pipe):
    def run(output_type, seed=0):
        return pipe(["a red circle", "a blue square"], num_inference_steps=3, num_images_per_prompt=2,
                    generator=torch.Generator().manual_seed(seed), output_type=output_type)

    first, again = run("pil"), run("pil")
    assert len(first) == 4 and all(image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB" for image in first)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    array = run("np")
    assert array.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) and array.dtype == np.float32
    assert 0 <= array.min() and array.max() <= 1
    assert np.array_equal(np.stack([np.asarray(image) for image in first]), (array * 255).round().astype(np.uint8))
    assert not np.allclose(array, run("np", seed=1))
    latents = run("latent")
    assert latents.shape == (4, 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2)
    assert np.abs(pipe.to_images(pipe.decode_latents(latents), "np") - array).max() == 0


def test_images_per_prompt_are_ordered_prompt_by_prompt(pipe):
    x_T = noise(pipe, 4)
    both = pipe(["a red circle", "a blue square"], num_inference_steps=3, latents=x_T, num_images_per_prompt=2,
                output_type="np")
    second = pipe("a blue square", num_inference_steps=3, latents=x_T[2:], num_images_per_prompt=2, output_type="np")
    assert np.abs(both[2:] - second).max() < 1e-5


def test_guidance_sweep_equals_separate_runs(pipe):
    scales = [1.0, 3.0, 7.5]
    x_T = noise(pipe, 2)
    for sampler in ("ddim", "euler"):
        sweep = pipe(PROMPT, negative_prompt="a square", num_inference_steps=3, guidance_scale=scales, latents=x_T,
                     num_images_per_prompt=2, sampler=sampler, output_type="np")
        assert sweep.shape == (6, IMAGE_SIZE, IMAGE_SIZE, 3)
        for index, scale in enumerate(scales):
            alone = pipe(PROMPT, negative_prompt="a square", num_inference_steps=3, guidance_scale=scale, latents=x_T,
                         num_images_per_prompt=2, sampler=sampler, output_type="np")
            assert np.abs(sweep[2 * index:2 * index + 2] - alone).max() < 1e-5, (sampler, scale)
    # the same with a seed instead of latents: every scale starts from the same noise
    sweep = pipe(PROMPT, num_inference_steps=3, guidance_scale=(2.0, 5.0), generator=torch.Generator().manual_seed(4),
                 output_type="np")
    alone = pipe(PROMPT, num_inference_steps=3, guidance_scale=5.0, generator=torch.Generator().manual_seed(4),
                 output_type="np")
    assert np.abs(sweep[1:] - alone).max() < 1e-5 and np.abs(sweep[0] - alone[0]).max() > 1e-3


def test_guidance_and_negative_prompt(pipe):
    x_T = noise(pipe, 1)

    def run(**kwargs):
        return pipe(PROMPT, num_inference_steps=3, latents=x_T, output_type="np", **kwargs)

    # no negative prompt = the empty prompt "" in the unconditional branch
    assert np.array_equal(run(guidance_scale=5.0), run(guidance_scale=5.0, negative_prompt=""))
    assert np.abs(run(guidance_scale=5.0) - run(guidance_scale=5.0, negative_prompt="a blue square")).max() > 1e-3
    # scale 1 (or less) is the conditional model alone, as in diffusers: the negative prompt plays no part
    conditional = run(guidance_scale=1.0)
    assert np.array_equal(conditional, run(guidance_scale=1.0, negative_prompt="a blue square"))
    assert np.array_equal(conditional, run(guidance_scale=0.5))
    assert np.abs(conditional - run(guidance_scale=5.0)).max() > 1e-3


def test_callback_and_progress_bar(pipe, capsys):
    calls = []
    pipe(PROMPT, num_inference_steps=3, output_type="latent",
         callback=lambda i, t, x: calls.append((i, int(t), x.shape)))
    assert [call[0] for call in calls] == [0, 1, 2] and calls[0][1] > calls[-1][1]
    assert capsys.readouterr().err == ""  # disabled by the fixture
    pipe.set_progress_bar_config()
    try:
        pipe(PROMPT, num_inference_steps=2, output_type="latent", sampler="euler")
        assert "euler" in capsys.readouterr().err
    finally:
        pipe.set_progress_bar_config(disable=True)


def test_to_moves_the_vae_to_the_pipelines_dtype(mini_sd_folder):
    pipe = StableDiffusion.from_course("mini-sd", directory=mini_sd_folder, dtype=torch.float16)
    assert pipe.vae.config.force_upcast  # SD v1.x's config has it; diffusers' SD pipeline ignores it
    assert pipe.dtype == torch.float16 and pipe.text_encoder.dtype == torch.float16
    assert next(pipe.vae.parameters()).dtype == torch.float16  # decodes in float16, as diffusers' SD pipeline
    pipe.vae.to(torch.float32)  # decoding in float32 anyway: the latents are cast to the VAE's dtype
    latents = torch.zeros((1, 4, IMAGE_SIZE // 2, IMAGE_SIZE // 2), dtype=torch.float16)
    assert pipe.decode_latents(latents).dtype == torch.float32
    pipe.to(torch.bfloat16)
    assert next(pipe.vae.parameters()).dtype == torch.bfloat16
    pipe.to("cpu", torch.float32)
    assert pipe.dtype == torch.float32 and pipe.device == torch.device("cpu")
    with pytest.raises(TypeError, match="floating-point dtype"):
        pipe.to(torch.int64)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(height=18), ValueError, r"height must be a multiple of 4, got 18: the VAE shrinks images by 2 and the UNet "
                                  r"halves its latents 1 times. Use 16 or 20"),
    (dict(width=2), ValueError, r"width must be a multiple of 4, got 2.*Use 4\."),
    (dict(num_inference_steps=0), ValueError, r"num_inference_steps must be between 1 and 1000, got 0"),
    (dict(num_inference_steps=2.5), TypeError, r"num_inference_steps must be an integer"),
    (dict(sampler="heun"), ValueError, r"Unknown sampler 'heun'. Expected one of: 'ddpm', 'ddim', 'euler', "
                                       r"'dpmsolver'"),
    (dict(guidance_scale=-1.0), ValueError, r"guidance_scale must be at least 0.0, got -1.0"),
    (dict(guidance_scale=[3.0, -2.0]), ValueError, r"guidance_scale must be at least 0.0, got -2.0"),
    (dict(guidance_scale=[]), ValueError, r"guidance_scale is an empty list"),
    (dict(guidance_scale="high"), TypeError, r"guidance_scale must be a number"),
    (dict(prompt=3), TypeError, r"prompt must be a string or a list of strings, got 3"),
    (dict(prompt=["a red circle", None]), TypeError, r"prompt must be a string or a list of strings"),
    (dict(prompt=[]), ValueError, r"prompt is an empty list"),
    (dict(prompt=["a", "b"], negative_prompt=["c"]), ValueError, r"negative_prompt has 1 entries but prompt has 2"),
    (dict(negative_prompt=5), TypeError, r"negative_prompt must be a string or a list of strings"),
    (dict(prompt=["a", "b"], guidance_scale=[1.0, 2.0]), ValueError,
     r"A list of guidance scales \(a sweep\) takes one prompt"),
    (dict(latents=torch.zeros(2, 4, 4, 4)), ValueError, r"latents has shape \(2, 4, 4, 4\), expected \(1, 4, 8, 8\)"),
    (dict(latents=torch.zeros(2, 4, 8, 8), guidance_scale=[1.0, 2.0]), ValueError,
     r"expected \(1, 4, 8, 8\).*a guidance sweep shares one noise for all scales"),
    (dict(latents=np.zeros((1, 4, 8, 8))), TypeError, r"latents must be a torch.Tensor"),
    (dict(latents=torch.zeros(1, 4, 8, 8, dtype=torch.complex64)), TypeError,
     r"latents must be a real floating-point tensor \(the starting noise z_T\), got dtype torch.complex64"),
    (dict(latents=torch.zeros(1, 4, 8, 8, dtype=torch.int64)), TypeError, r"real floating-point.*torch.int64.*randn"),
    (dict(latents=torch.full((1, 4, 8, 8), float("nan"))), ValueError,
     r"latents has 256 non-finite values \(NaN or inf\)"),
    (dict(generator=0), TypeError, r"generator must be a torch.Generator"),
    (dict(output_type="pt"), ValueError, r"Unknown output_type 'pt'"),
    (dict(num_images_per_prompt=0), ValueError, r"num_images_per_prompt must be at least 1"),
    (dict(callback="print"), TypeError, r"callback must be a function"),
])
def test_bad_inputs_say_what_to_do(pipe, kwargs, error, match):
    arguments = dict(prompt=PROMPT, num_inference_steps=2, output_type="latent")
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        pipe(**arguments)


def test_prompt_warnings(pipe):
    with pytest.warns(UserWarning, match="truncated because the text encoder can only handle sequences up to 16"):
        pipe("a large red circle in the center " * 3, num_inference_steps=1, output_type="latent")
    with pytest.warns(UserWarning, match=r"not in the tokenizer's vocabulary.*\['purple'\]"):
        pipe("a purple circle", num_inference_steps=1, output_type="latent")


def test_unsupported_scheduler_settings_are_refused(pipe):
    parts = (pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, pipe.schedule)
    with pytest.raises(ValueError, match=r"prediction_type='v_prediction' is not implemented.*SD 2.x-base"):
        StableDiffusion(*parts, scheduler_config={"prediction_type": "v_prediction"})
    with pytest.raises(ValueError, match=r"use_karras_sigmas=True is not implemented"):
        StableDiffusion(*parts, scheduler_config={"use_karras_sigmas": True})
    # defaults filled in by a scheduler (listed in _use_default_values) are not settings
    custom = StableDiffusion(*parts, scheduler_config={"steps_offset": 1, "timestep_spacing": "trailing",
                                                       "_use_default_values": ["timestep_spacing"]})
    assert custom.timestep_spacing is None and custom.make_sampler("euler").timestep_spacing == "linspace"
    custom.timestep_spacing = "trailing"
    assert custom.make_sampler("ddim").timestep_spacing == "trailing"


# ----------------------------------------------------------------------------------------------
# Stable Diffusion v1.x from diffusers, offline


def test_from_pretrained_offline_and_not_cached_fails_at_once(monkeypatch, tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("COURSE_SD_PATH", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"not in the Hugging Face cache and downloads are off.*hf download "
                                                r"stable-diffusion-v1-5/stable-diffusion-v1-5.*COURSE_SD_PATH="):
        StableDiffusion.from_pretrained(SD_REPO_ID)
    assert time.perf_counter() - start < 5
    with pytest.raises(FileNotFoundError, match=r"No folder './no/such/folder'"):
        StableDiffusion.from_pretrained("./no/such/folder")
    monkeypatch.setenv("COURSE_SD_PATH", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="COURSE_SD_PATH is .* which is not a folder"):
        StableDiffusion.from_pretrained(SD_REPO_ID)
    monkeypatch.setenv("COURSE_SD_PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError,
                       match=r"missing scheduler/scheduler_config.json, tokenizer, .*unet/config.json"):
        StableDiffusion.from_pretrained(SD_REPO_ID)
    # an explicit path that does not exist is an error, whatever COURSE_SD_PATH says
    with pytest.raises(FileNotFoundError, match=r"No folder '.*no-such-folder'"):
        StableDiffusion.from_pretrained(tmp_path / "no-such-folder")
    with pytest.raises(FileNotFoundError, match=r"There is no folder 'weights/sd15' here, and the Stable Diffusion "
                                                r"weights 'weights/sd15' are not in the Hugging Face cache"):
        StableDiffusion.from_pretrained("weights/sd15")  # could be a repo id: the hub cache is asked too


# A tiny byte-level BPE vocabulary in CLIP's format: the 256 byte symbols, the same with the
# end-of-word mark </w>, a few merges, the start and end tokens.
def _bytes_to_unicode() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


MERGES = ["r e", "re d</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>", "s q", "sq u", "squ a", "squa r",
          "squar e</w>", "b l", "bl u", "blu e</w>"]


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-tokenizer")
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in MERGES]
    vocab = {token: index for index, token in enumerate([*tokens, "<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return transformers.CLIPTokenizer.from_pretrained(folder, local_files_only=True)


TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
)
# SD v1.5's block structure at reduced width (attention_head_dim=8: 8 heads, as in SD)
SD15_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(32, 32, 64, 64), layers_per_block=2, norm_num_groups=16, cross_attention_dim=32,
    attention_head_dim=8,
)
# scaling_factor 1 keeps the random decoder's output mostly inside [-1, 1], so the images are compared unclipped
TINY_VAE = dict(
    block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=1.0,
)
# Stable Diffusion v1.5's scheduler settings
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                      clip_sample=False, set_alpha_to_one=False)


def make_diffusers_pipe(diffusers, tokenizer, unet_kwargs=TINY_UNET, seed=0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**unet_kwargs).eval()
    vae = diffusers.AutoencoderKL(**TINY_VAE).eval()
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).eval()
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=diffusers.DDIMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


SCHEDULERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "euler": "EulerDiscreteScheduler",
              "dpmsolver": "DPMSolverMultistepScheduler"}


@pytest.fixture(scope="module")
def diffusers_pair(clip_tokenizer):
    diffusers = pytest.importorskip("diffusers")
    theirs = make_diffusers_pipe(diffusers, clip_tokenizer)
    ours = StableDiffusion.from_diffusers(theirs)
    ours.set_progress_bar_config(disable=True)
    return diffusers, theirs, ours


def compare(diffusers, theirs, ours, sampler, latents=None, seed=0, base_config=None, **kwargs):
    """Run both pipelines with the same inputs; diffusers' scheduler swapped as its docs show,
    ``XScheduler.from_config(config)`` of the config ``ours`` was built from (default: SD v1.5's DDIM)."""
    base_config = base_config or diffusers.DDIMScheduler(**SD15_SCHEDULER).config
    theirs.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(base_config)
    want = theirs(latents=latents, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images
    got = ours(latents=latents, generator=torch.Generator().manual_seed(seed), output_type="np", sampler=sampler,
               **kwargs)
    assert got.shape == want.shape
    difference = np.abs(got - want).max()
    assert difference < TOL, (sampler, kwargs, difference)
    return got


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler", "dpmsolver"])
@pytest.mark.parametrize("guidance_scale, negative_prompt", [(1.0, None), (7.5, None), (7.5, "a blue square")])
def test_matches_diffusers(diffusers_pair, sampler, guidance_scale, negative_prompt):
    diffusers, theirs, ours = diffusers_pair
    latents = noise(ours, 2, seed=1)
    images = compare(diffusers, theirs, ours, sampler, latents=latents, prompt=["a red circle", "a square"],
                     negative_prompt=None if negative_prompt is None else [negative_prompt, "a red circle"],
                     num_inference_steps=4, guidance_scale=guidance_scale)
    assert 0.05 < images.mean() < 0.95 and images.std() > 0.01  # not clipped to one value


def test_spacing_follows_diffusers_from_config(diffusers_pair):
    """SD v1.x's config sets no timestep_spacing: DDIM lays "leading" timesteps, Euler and DPM-Solver "linspace"."""
    diffusers, theirs, ours = diffusers_pair
    for name, spacing in (("ddim", "leading"), ("ddpm", "leading"), ("euler", "linspace"), ("dpmsolver", "linspace")):
        scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(diffusers.DDIMScheduler(**SD15_SCHEDULER).config)
        scheduler.set_timesteps(7)
        sampler = ours.make_sampler(name)
        sampler.set_timesteps(7)
        assert sampler.timestep_spacing == spacing and scheduler.config.timestep_spacing == spacing
        assert torch.equal(sampler.timesteps.double(), scheduler.timesteps.double()), name


def test_matches_diffusers_with_a_seed_and_several_images_per_prompt(diffusers_pair):
    diffusers, theirs, ours = diffusers_pair
    compare(diffusers, theirs, ours, "ddim", prompt=["a red circle", "a blue square"], num_images_per_prompt=2,
            num_inference_steps=3, guidance_scale=7.5, seed=3)


def test_float16_decodes_in_float16_as_diffusers_does(clip_tokenizer):
    """diffusers' StableDiffusionPipeline in float16 decodes in float16 (its VAE config's force_upcast is read by the
    SDXL pipelines only), and so does ours: the decoder sees float16 latents in both."""
    diffusers = pytest.importorskip("diffusers")
    theirs = make_diffusers_pipe(diffusers, clip_tokenizer).to(torch.float16)
    ours = StableDiffusion.from_diffusers(theirs)
    ours.set_progress_bar_config(disable=True)
    assert theirs.vae.config.force_upcast and ours.vae.config.force_upcast
    seen = {}
    for name, pipe in (("theirs", theirs), ("ours", ours)):
        def record(module, args, name=name):
            seen[name] = args[0].dtype

        hook = pipe.vae.post_quant_conv.register_forward_pre_hook(record)
        pipe("a red circle", num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np")
        hook.remove()
    assert seen == {"theirs": torch.float16, "ours": torch.float16}


@pytest.mark.slow
def test_matches_diffusers_with_sd15_block_structure(clip_tokenizer):
    diffusers = pytest.importorskip("diffusers")
    theirs = make_diffusers_pipe(diffusers, clip_tokenizer, SD15_UNET)
    ours = StableDiffusion.from_diffusers(theirs)
    ours.set_progress_bar_config(disable=True)
    assert ours.size_multiple == 16 and ours.default_size == (16, 16)
    compare(diffusers, theirs, ours, "euler", prompt="a red circle", negative_prompt="a square",
            num_inference_steps=3, guidance_scale=7.5, seed=5)


@pytest.mark.slow
def test_from_pretrained_loads_what_diffusers_saved(diffusers_pair, tmp_path, monkeypatch):
    diffusers, theirs, _ = diffusers_pair
    theirs.scheduler = diffusers.DDIMScheduler(**SD15_SCHEDULER)
    theirs.save_pretrained(tmp_path, safe_serialization=True)
    ours = StableDiffusion.from_pretrained(tmp_path)
    ours.set_progress_bar_config(disable=True)
    assert isinstance(ours.tokenizer, transformers.CLIPTokenizer) and ours.tokenizer.model_max_length == 77
    reloaded = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path, local_files_only=True)
    reloaded.set_progress_bar_config(disable=True)
    saved_config = reloaded.scheduler.config
    for sampler in ("ddim", "euler"):  # the saved config spells out timestep_spacing="leading": Euler uses it too
        compare(diffusers, reloaded, ours, sampler, latents=noise(ours, 1, seed=2), prompt="a red circle",
                num_inference_steps=3, guidance_scale=7.5, base_config=saved_config)
    # $COURSE_SD_PATH stands in for SD v1.5's repo id (and the default), never for an explicit path
    monkeypatch.setenv("COURSE_SD_PATH", str(tmp_path))
    assert StableDiffusion.from_pretrained().unet.config == ours.unet.config
    assert StableDiffusion.from_pretrained(SD_REPO_ID).unet.config == ours.unet.config
    with pytest.raises(FileNotFoundError, match=r"No folder '.*missing'"):
        StableDiffusion.from_pretrained(tmp_path / "missing")
    # weights that do not fit their config.json: check_state_dict's report names the file and the keys
    vae_config = json.loads((tmp_path / "vae" / "config.json").read_text())
    (tmp_path / "vae" / "config.json").write_text(json.dumps({**vae_config, "block_out_channels": [32, 32]}))
    with pytest.raises(ValueError, match=r"vae/diffusion_pytorch_model.safetensors: the weights do not fit the network "
                                         r"\(.*keys with another shape.*the config.json and the weights come from "
                                         r"different models"):
        StableDiffusion.from_pretrained(tmp_path)
    (tmp_path / "vae" / "config.json").write_text(json.dumps(vae_config))
    # a folder downloaded with variant="fp16" (weights *.fp16.safetensors) loads too
    unet, text = tmp_path / "unet", tmp_path / "text_encoder"
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "diffusion_pytorch_model.fp16.safetensors")
    (text / "model.safetensors").rename(text / "model.fp16.safetensors")
    variant = StableDiffusion.from_pretrained(tmp_path)
    variant.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a red circle", num_inference_steps=2, latents=noise(ours, 1), output_type="latent")
    assert torch.equal(variant(**kwargs), ours(**kwargs))
    # a folder with pickled weights only is refused with a message
    (unet / "diffusion_pytorch_model.fp16.safetensors").rename(unet / "diffusion_pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"missing unet/diffusion_pytorch_model.safetensors.*only safetensors"):
        StableDiffusion.from_pretrained(tmp_path)


def test_clip_tokenizer_prompts_do_not_warn(diffusers_pair, recwarn):
    _, _, ours = diffusers_pair
    ours.encode_prompt("a red circle", do_cfg=True)
    assert not [w for w in recwarn if "vocabulary" in str(w.message)]


# ----------------------------------------------------------------------------------------------
# GPU (runs only where CUDA is present)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_float16_on_cuda_is_close_to_float32_on_cpu(mini_sd_folder):
    cpu = StableDiffusion.from_course("mini-sd", directory=mini_sd_folder)
    gpu = StableDiffusion.from_course("mini-sd", directory=mini_sd_folder, device="cuda", dtype=torch.float16)
    for p in (cpu, gpu):
        p.set_progress_bar_config(disable=True)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float16
    assert next(gpu.vae.parameters()).dtype == torch.float16  # as diffusers' StableDiffusionPipeline
    # a CPU generator gives the same starting noise on the GPU
    sampler = gpu.make_sampler("ddim")
    sampler.set_timesteps(3)
    on_gpu = gpu.prepare_latents(2, IMAGE_SIZE, IMAGE_SIZE, sampler, torch.Generator().manual_seed(0))
    on_cpu = cpu.prepare_latents(2, IMAGE_SIZE, IMAGE_SIZE, sampler, torch.Generator().manual_seed(0))
    assert torch.allclose(on_gpu.float().cpu(), on_cpu, atol=1e-2)
    kwargs = dict(prompt=PROMPT, num_inference_steps=5, guidance_scale=7.5, output_type="np")
    want = cpu(generator=torch.Generator().manual_seed(0), **kwargs)
    got = gpu(generator=torch.Generator().manual_seed(0), **kwargs)
    assert np.isfinite(got).all() and np.abs(got - want).max() < 0.05


@cuda
def test_diffusers_float16_pipeline_on_cuda(clip_tokenizer):
    diffusers = pytest.importorskip("diffusers")
    theirs = make_diffusers_pipe(diffusers, clip_tokenizer).to("cuda", torch.float16)
    ours = StableDiffusion.from_diffusers(theirs)
    ours.set_progress_bar_config(disable=True)
    assert ours.device.type == "cuda" and ours.dtype == torch.float16
    images = ours("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert np.isfinite(images).all()


# ----------------------------------------------------------------------------------------------
# img2img, against diffusers' StableDiffusionImg2ImgPipeline with the same components


@pytest.mark.filterwarnings("ignore:Passing `image` as torch tensor:FutureWarning")
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler", "dpmsolver"])
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_img2img_matches_diffusers(diffusers_pair, sampler, strength):
    diffusers, theirs, ours = diffusers_pair
    base_config = diffusers.DDIMScheduler(**SD15_SCHEDULER).config
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**theirs.components)
    img2img.scheduler = getattr(diffusers, SCHEDULERS[sampler]).from_config(base_config)
    img2img.set_progress_bar_config(disable=True)
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    kwargs = dict(prompt=["a red circle", "a square"], negative_prompt=["a blue square", ""], strength=strength,
                  num_inference_steps=6, guidance_scale=7.5)
    want = img2img(image=image, generator=torch.Generator().manual_seed(2), output_type="np", **kwargs).images
    got = ours.img2img(image, generator=torch.Generator().manual_seed(2), output_type="np", sampler=sampler, **kwargs)
    assert np.abs(got - want).max() < TOL, (sampler, strength, np.abs(got - want).max())


def test_img2img_strength_and_inputs(pipe):
    from PIL import Image

    picture = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (200, 40, 40))
    kept = pipe.img2img(picture, "a circle", strength=0.0, generator=torch.Generator().manual_seed(0),
                        output_type="np")
    roundtrip = pipe.to_images(pipe.decode_latents(pipe.vae.encode(
        torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    ).sample(torch.Generator().manual_seed(0)) * pipe.vae.config.scaling_factor), "np")
    assert np.abs(kept - roundtrip).max() < 1e-5  # strength 0: only the autoencoder's round trip
    light = pipe.img2img(picture, "a circle", strength=0.3, num_inference_steps=10,
                         generator=torch.Generator().manual_seed(0), output_type="np")
    heavy = pipe.img2img(picture, "a circle", strength=1.0, num_inference_steps=10,
                         generator=torch.Generator().manual_seed(0), output_type="np")
    assert np.abs(light - kept).mean() < np.abs(heavy - kept).mean()  # more strength, further from the input
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        pipe.img2img(picture, "a circle", strength=1.5)
    with pytest.raises(TypeError, match="PIL image"):
        pipe.img2img("picture.png", "a circle")
    with pytest.raises(ValueError, match="2 images and 3 prompts"):
        pipe.img2img([picture, picture], ["a", "b", "c"])


# ----------------------------------------------------------------------------------------------
# One loop for __call__ and img2img; inputs; bounded resources


def test_call_is_prepare_latents_then_run_loop_with_any_step(pipe):
    x_T = noise(pipe, 2)
    want = pipe(["a red circle", "a blue square"], num_inference_steps=3, latents=x_T, sampler="euler",
                output_type="latent")
    sampler = pipe.make_sampler("euler")
    sampler.set_timesteps(3)
    seen = []

    def step(noise_pred, t, latents):  # the update of the loop, as an inversion would pass its own
        seen.append(float(t))
        return sampler.step(noise_pred, t, latents)

    start = pipe.prepare_latents(2, IMAGE_SIZE, IMAGE_SIZE, sampler, latents=x_T)
    got = pipe.run_loop(start, ["a red circle", "a blue square"], None, [7.5], sampler, sampler.timesteps, step=step)
    assert torch.equal(got, want) and seen == sampler.timesteps.tolist()
    # the timesteps in another order and another step function run as given (what a DDIM inversion needs)
    seen.clear()
    pipe.run_loop(start, ["a red circle", "a blue square"], None, [1.0], sampler, sampler.timesteps.flip(0),
                  step=lambda noise_pred, t, latents: seen.append(float(t)) or latents)
    assert seen == sampler.timesteps.flip(0).tolist()


def test_img2img_takes_uint8_pixels_and_refuses_values_outside_the_range(pipe):
    from PIL import Image

    from course_lib.pixels import from_uint8

    pixels = np.random.default_rng(0).integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    as_float = from_uint8(pixels)  # (2, 3, H, W) in [-1, 1]

    def run(image):
        return pipe.img2img(image, "a circle", strength=0.5, num_inference_steps=4,
                            generator=torch.Generator().manual_seed(0), output_type="latent")

    want = run(as_float)
    for image in ([Image.fromarray(p) for p in pixels], pixels, torch.from_numpy(pixels),
                  torch.from_numpy(pixels).permute(0, 3, 1, 2)):  # PIL, uint8 (B, H, W, 3), a tensor, (B, 3, H, W)
        assert torch.equal(run(image), want)
    assert torch.equal(run(pixels[0]), run(pixels[:1]))  # one (H, W, 3) picture is a batch of one
    with pytest.raises(ValueError, match=r"image has values from 0 to 255, outside \[-1, 1\].*"
                                         r"course_lib.pixels.from_unit.*as uint8"):
        run(torch.from_numpy(pixels).permute(0, 3, 1, 2).float())  # 0..255 as floats: refused, not guessed
    with pytest.raises(ValueError, match=r"image has values from -0.5 to 1.5, outside \[-1, 1\]"):
        run(torch.linspace(-0.5, 1.5, 3 * IMAGE_SIZE ** 2).reshape(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    with pytest.raises(ValueError, match="image has NaN or inf values"):
        run(torch.full((1, 3, IMAGE_SIZE, IMAGE_SIZE), float("nan")))
    with pytest.raises(TypeError, match=r"image has dtype torch.int64: give 8-bit pixels as uint8 \(0..255\)"):
        run(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"8-bit pixels are \(B, H, W, 3\)"):
        run(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8))


def test_non_finite_latents_name_the_guidance_scale(pipe):
    with pytest.raises(ValueError, match=r"The (noise prediction|latents) became non-finite \(NaN or inf\) at step \d of 3 \(t=\d+\)\. "
                                         r"The likely cause is the guidance scale \(1e\+30\).*starting latents "
                                         r"\(their values ran from -?\d.* to \d"):
        pipe(PROMPT, num_inference_steps=3, guidance_scale=1e30, generator=torch.Generator().manual_seed(0),
             output_type="latent")


def test_requests_over_the_caps_are_refused_before_any_work(pipe, monkeypatch):
    monkeypatch.delenv(MEMORY_CAP_VARIABLE, raising=False)
    monkeypatch.delenv(LATENT_POSITIONS_VARIABLE, raising=False)
    calls = []
    monkeypatch.setattr(pipe, "encode_prompt", lambda *args, **kwargs: calls.append(args))
    start = time.perf_counter()
    for side in (4096, 32768):  # latents of side / 2: over the 16384 positions of the cap
        with pytest.raises(ResourceLimitError, match=rf"{side}x{side} pixels are {(side // 2) ** 2} latent positions "
                                                     rf"per image, over the cap of 16384"):
            pipe(PROMPT, height=side, width=side)
    assert time.perf_counter() - start < 1 and not calls  # nothing encoded, nothing allocated
    one = pipe.check_resources(1, 256, 256, guidance=True)  # under the default cap
    monkeypatch.setenv(MEMORY_CAP_VARIABLE, "1")
    images = 2**30 // one.peak + 1  # more than fit under 1 GiB
    with pytest.raises(ResourceLimitError, match=rf"Sampling {3 * images} image\(s\) of 256x256 pixels needs "
                                                 rf"about .* GiB.*over the cap of 1.00 GiB"):
        pipe(PROMPT, height=256, width=256, num_images_per_prompt=images, guidance_scale=[1.0, 3.0, 7.5])
    # img2img: the size is read before the picture is converted
    with pytest.raises(ResourceLimitError, match=r"Sampling 64 image\(s\) of 256x256 pixels"):
        pipe.img2img(np.zeros((64, 256, 256, 3), dtype=np.uint8), "a circle")
    assert not calls

