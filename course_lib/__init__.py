"""course_lib: Stable Diffusion from the ground up.

One module per idea of the course, in layers from the bottom up (a module imports only from its
layer and those above it; CONTRIBUTING.md's architecture table lists every module, and
tests/test_layers.py checks the imports against it):

    files, pixels, checks    atomic file writes, the [-1, 1] <-> 0..255 conversion, argument checks
    i18n                     the language setting (English, 简体中文) and the translated lessons
    profiling                parameters, FLOPs, kernel launches, activation memory, time   (06, 10)
    checkpoints, runtime     checkpoints saved as one unit; devices, seeds, DDP, Ctrl-C
    captions                 the shapes world: shapes, colours, sizes, positions, captions
    schedules, diffusion     the noise schedule; q(x_t | x_0) and the x0 / eps / score / v conversions
    samplers, guidance       DDPM, DDIM, Euler, DPM-Solver++(2M); classifier and classifier-free guidance
    mixture, sample_stats    lesson 03's Gaussian mixture with exact scores, and its statistics
    nn/                      the networks (config base, UNet, attention, VAE, text, classifiers, MLP)
    networks, losses         networks by name for checkpoints; every training loss
    datasets, metrics        digits and shapes-with-captions; how good generated images are
    recipes, train           the shipped models' recipes; the one training loop
    pretrained, sd_loading   the shipped checkpoints; where a StableDiffusion's parts come from
    limits, pipeline         the memory caps of a request; StableDiffusion, the sampling loop
    lora, inversion, orange  lesson 11: LoRA and a new token, DDIM inversion, a seventh colour
    experiments              the measured, cached guidance and sampler sweeps
    viz, widgets             image grids and plots; the guidance explorer
    exercises/, student      the self-grading exercises; student versions of the notebooks
    __main__                 the command line: python -m course_lib ...
"""

from .i18n import get_language, set_language  # noqa: F401  (course_lib.set_language("zh"))

__version__ = "0.1.0"
