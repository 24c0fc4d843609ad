"""Tests of course_lib.pretrained: loading course checkpoints, and the errors when that fails."""

import pytest
import torch

from course_lib.checkpoints import CheckpointError, save_checkpoint
from course_lib.networks import build_network
from course_lib.pretrained import CHECKPOINT_DIR, available_checkpoints, load_course_model

TINY_UNET = dict(
    sample_size=8, in_channels=1, out_channels=1,
    down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"],
    mid_block_type="UNetMidBlock2D", block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4,
)
SCHEDULE = {"kind": "linear", "num_train_timesteps": 100, "beta_start": 1e-4, "beta_end": 0.02}


def _save(folder, name, network_config=TINY_UNET, weights_config=TINY_UNET, seed=0):
    torch.manual_seed(seed)
    model = build_network("UNet2DConditionModel", weights_config)
    config = {"network": "UNet2DConditionModel", "network_config": network_config, "schedule": SCHEDULE,
              "recipe": name, "step": 5}
    save_checkpoint(folder / name, model, config)
    return model


def test_load_course_model_round_trip(tmp_path):
    saved = _save(tmp_path, "digits-ddpm")
    model, config = load_course_model("digits-ddpm", directory=tmp_path)
    assert not model.training and config["schedule"] == SCHEDULE and config["step"] == 5
    for key, value in saved.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor([3, 50])), saved.eval()(x, torch.tensor([3, 50])))


def test_environment_variable_and_device(tmp_path, monkeypatch):
    _save(tmp_path, "digits-ddpm")
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(tmp_path))
    model, _ = load_course_model("digits-ddpm", device="cpu")
    assert next(model.parameters()).device == torch.device("cpu")
    assert available_checkpoints() == ["digits-ddpm"]


def test_default_folder_is_data_checkpoints_of_the_repository():
    assert CHECKPOINT_DIR.parts[-2:] == ("data", "checkpoints")
    assert (CHECKPOINT_DIR.parent.parent / "course_lib" / "__init__.py").is_file()


def test_available_checkpoints_needs_both_files(tmp_path):
    _save(tmp_path, "b-model")
    _save(tmp_path, "a-model")
    (tmp_path / "lonely.safetensors").write_bytes(b"")
    (tmp_path / "a-model.state.safetensors").write_bytes(b"")
    (tmp_path / "a-model.state.json").write_text("{}")
    assert available_checkpoints(tmp_path) == ["a-model", "b-model"]
    assert available_checkpoints(tmp_path / "no such folder") == []


def test_missing_checkpoint_says_which_file_and_how_to_make_it(tmp_path):
    with pytest.raises(CheckpointError, match=r"digits-ddpm: checkpoint 'digits-ddpm' not found: digits-ddpm.safetensors "
                                              r"and digits-ddpm.json missing in .* — Make it with: python -m course_lib "
                                              r"train digits-ddpm --out .*digits-ddpm$"):
        load_course_model("digits-ddpm", directory=tmp_path)
    _save(tmp_path, "digits-ddpm")
    (tmp_path / "digits-ddpm.json").unlink()
    with pytest.raises(CheckpointError, match=r"not found: digits-ddpm.json missing"):
        load_course_model("digits-ddpm", directory=tmp_path)
    _save(tmp_path, "other")
    with pytest.raises(CheckpointError, match=r"\(checkpoints present there: other\) — No recipe makes .* known "
                                              r"recipes: .*digits-ddpm"):
        load_course_model("mystery", directory=tmp_path)


def test_config_that_does_not_match_the_weights_names_the_keys(tmp_path):
    _save(tmp_path, "shapes-differ")
    json_path = tmp_path / "shapes-differ.json"  # edited by hand: it disagrees with the config inside the weights
    json_path.write_text(json_path.read_text().replace('"block_out_channels": [\n      8,\n      16\n    ]',
                                                       '"block_out_channels": [8, 32]'))
    with pytest.raises(CheckpointError, match=r"shapes-differ.json: says network_config.block_out_channels = \[8, 32\], "
                                              r"but shapes-differ.safetensors was saved with "
                                              r"network_config.block_out_channels = \[8, 16\]"):
        load_course_model("shapes-differ", directory=tmp_path)
    # both files say the same config, but the weights do not fit it (saved by hand from another network)
    _save(tmp_path, "keys-differ", network_config=dict(TINY_UNET, layers_per_block=2))
    with pytest.raises(CheckpointError, match=r"keys-differ.safetensors: the weights do not fit the network \(.* keys "
                                              r"missing from the file: down_blocks\.0\.resnets\.1\..* — train it again: "
                                              r"python -m course_lib train RECIPE --out .*keys-differ --overwrite"):
        load_course_model("keys-differ", directory=tmp_path)


def test_int64_weights_are_refused_not_cast(tmp_path):
    torch.manual_seed(0)
    model = build_network("UNet2DConditionModel", TINY_UNET)
    weights = {key: value.round().long() if key == "conv_in.weight" else value
               for key, value in model.state_dict().items()}
    save_checkpoint(tmp_path / "digits-ddpm", weights, {"network": "UNet2DConditionModel", "network_config": TINY_UNET})
    with pytest.raises(CheckpointError, match=r"digits-ddpm.safetensors: the weights do not fit the network \(1 tensors "
                                              r"of another dtype: conv_in.weight torch.int64 in the file, torch.float32 "
                                              r"in the network\) — train it again: python -m course_lib train "
                                              r"digits-ddpm --out"):
        load_course_model("digits-ddpm", directory=tmp_path)


def test_config_without_network_and_bad_name(tmp_path):
    save_checkpoint(tmp_path / "raw", build_network("UNet2DConditionModel", TINY_UNET), {"step": 1})
    with pytest.raises(CheckpointError, match="raw.json: has no 'network' entry, so it does not say which network"):
        load_course_model("raw", directory=tmp_path)
    save_checkpoint(tmp_path / "gan", {"w": torch.zeros(1)}, {"network": "GAN", "network_config": {}})
    with pytest.raises(CheckpointError, match="gan.json: names the network 'GAN', which course_lib does not know"):
        load_course_model("gan", directory=tmp_path)
    with pytest.raises(TypeError, match="name must be a checkpoint name"):
        load_course_model(None)


@pytest.mark.slow
def test_every_shipped_checkpoint_loads_bit_identical_to_its_file():
    from safetensors.torch import load_file

    names = available_checkpoints(CHECKPOINT_DIR)
    assert {"digits-ddpm", "digits-cfg", "digits-noisy-classifier", "digits-judge", "shapes-judge", "shapes-vae",
            "shapes-clip", "shapes-ldm"} <= set(names)
    for name in names:
        model, config = load_course_model(name)
        raw = load_file(str(CHECKPOINT_DIR / f"{name}.safetensors"))  # the file itself, no course_lib in between
        state = model.state_dict()
        assert set(raw) <= set(state)
        for key, value in raw.items():
            assert value.dtype == state[key].dtype and torch.equal(value, state[key]), (name, key)


def test_a_checkpoint_folder_that_is_a_file_is_named(tmp_path):
    (tmp_path / "not-a-folder").write_text("x")
    with pytest.raises(CheckpointError, match=r"not-a-folder: is a file, not a folder of checkpoints — give the folder"):
        load_course_model("digits-ddpm", directory=tmp_path / "not-a-folder")
