"""The networks of the course (no training code here).

    unet.py       UNet2DConditionModel + UNetConfig: the denoiser eps_theta(x_t, t, y) of every lesson,
                  and its building blocks (ResnetBlock2D, Timesteps, TimestepEmbedding, Downsample2D,
                  Upsample2D)
    attention.py  Attention, FeedForward (GEGLU), BasicTransformerBlock, Transformer2DModel
    classifier.py NoisyClassifier p(y | x_t, t) for classifier guidance; JudgeClassifier for evaluation
    vae.py        AutoencoderKL + VAEConfig: SD's KL autoencoder (encoder E, decoder D, diagonal Gaussian)
    text.py       the caption tokenizer and the tiny CLIP (transformers' CLIPModel): the text encoder

Module names follow diffusers, so diffusers' and Stable Diffusion's weights load by key.
"""

from .unet import UNet2DConditionModel, UNetConfig
from .vae import AutoencoderKL, VAEConfig

__all__ = ["UNet2DConditionModel", "UNetConfig", "AutoencoderKL", "VAEConfig"]
