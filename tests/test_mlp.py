"""course_lib.nn.mlp: the point denoiser of lesson 03."""

import pytest
import torch

from course_lib.losses import diffusion_training_loss
from course_lib.nn.mlp import MLPDenoiser, MLPDenoiserConfig
from course_lib.nn.unet import timestep_embedding
from course_lib.schedules import make_schedule


def test_shapes_and_timestep_forms():
    torch.manual_seed(0)
    model = MLPDenoiser(MLPDenoiserConfig(dim=3, hidden=16, depth=2, time_channels=8))
    x = torch.randn(5, 3)
    one = model(x, 7)
    assert one.shape == (5, 3)
    assert torch.equal(model(x, torch.tensor(7)), one)
    assert torch.equal(model(x, torch.full((5,), 7)), one)
    assert not torch.allclose(model(x, torch.arange(5)), one)  # the timestep is an input


def test_it_is_the_documented_mlp():
    torch.manual_seed(1)
    model = MLPDenoiser(MLPDenoiserConfig(dim=2, hidden=8, depth=1, time_channels=4))
    x, t = torch.randn(3, 2), torch.tensor([1, 500, 999])
    first, last = model.net[0], model.net[2]
    hidden = torch.nn.functional.silu(first(torch.cat([x, timestep_embedding(t, 4)], 1)))
    assert torch.allclose(model(x, t), last(hidden))


def test_the_eps_loss_falls_when_trained():
    torch.manual_seed(2)
    schedule = make_schedule("linear", 1000, 1e-4, 0.02)
    model = MLPDenoiser(MLPDenoiserConfig(hidden=32, depth=2))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    data = 0.3 * torch.randn(2000, 2, generator=generator) + torch.tensor([1.0, -1.0])

    def loss_on(x0):
        with torch.no_grad():
            return float(diffusion_training_loss(model, x0, schedule, generator=torch.Generator().manual_seed(5)))

    before = loss_on(data)
    for _ in range(150):
        loss = diffusion_training_loss(model, data[torch.randint(0, 2000, (128,), generator=generator)], schedule,
                                       generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_on(data) < 0.8 * before


def test_errors():
    with pytest.raises(ValueError, match="hidden"):
        MLPDenoiserConfig(hidden=0)
    model = MLPDenoiser()
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        model(torch.zeros(4, 3), 1)
    with pytest.raises(ValueError, match="one per point"):
        model(torch.zeros(4, 2), torch.tensor([1, 2]))
