"""A small MLP denoiser eps_theta(x_t, t) for points in a few dimensions (lesson 03).

Where lesson 02's UNet reads an image, this reads a point x_t of shape (D,) and the timestep:

    h_0 = [x_t, emb(t)]                      emb: the UNet's sinusoidal timestep embedding
    h_i = SiLU(W_i h_{i-1} + b_i)             i = 1 .. depth
    eps_theta(x_t, t) = W_out h_depth + b_out

Lesson 03 trains it on a 2-D Gaussian mixture, whose exact eps* is known, to see how close a
network trained with the eps-loss gets to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from course_lib.checks import check_finite, check_int_range
from course_lib.nn.unet import timestep_embedding

__all__ = ["MLPDenoiserConfig", "MLPDenoiser"]


@dataclass(frozen=True)
class MLPDenoiserConfig:
    """Sizes of :class:`MLPDenoiser`."""

    dim: int = 2              # D, the dimension of the points
    hidden: int = 128         # width of every hidden layer
    depth: int = 3            # number of hidden layers
    time_channels: int = 32   # width of the sinusoidal timestep embedding

    def __post_init__(self):
        check_int_range(self.dim, "dim", 1)
        check_int_range(self.hidden, "hidden", 1)
        check_int_range(self.depth, "depth", 1)
        check_int_range(self.time_channels, "time_channels", 2)


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t) for points: an MLP on the point and its timestep's sinusoidal embedding.

    :param config: the sizes (:class:`MLPDenoiserConfig`)
    """

    def __init__(self, config: MLPDenoiserConfig = MLPDenoiserConfig()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.dim + config.time_channels
        for _ in range(config.depth):
            layers += [nn.Linear(width, config.hidden), nn.SiLU()]
            width = config.hidden
        layers.append(nn.Linear(width, config.dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """x_t: (B, D), t: an int, a 0-d tensor or (B,) timesteps -> predicted noise (B, D)."""
        check_finite(x_t, "x_t")
        if x_t.ndim != 2 or x_t.shape[1] != self.config.dim:
            raise ValueError(
                f"x_t has shape {tuple(x_t.shape)}, expected (B, {self.config.dim}): one point per row. "
                f"Reshape it with x_t.reshape(-1, {self.config.dim})."
            )
        t = torch.as_tensor(t, device=x_t.device).reshape(-1)
        if t.numel() not in (1, x_t.shape[0]):
            raise ValueError(f"t has {t.numel()} timesteps for {x_t.shape[0]} points. Give one, or one per point (B,).")
        t = t.expand(x_t.shape[0])  # (B,)
        embedding = timestep_embedding(t, self.config.time_channels).to(x_t.dtype)  # (B, time_channels)
        return self.net(torch.cat([x_t, embedding], dim=1))  # (B, D + time_channels) -> (B, D)
