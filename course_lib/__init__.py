"""course_lib: Stable Diffusion from the ground up.

One module per idea of the course, bottom to top (a module imports only from those above it
in this list):

    checks      argument checks that raise errors a learner can act on
    schedules   the noise schedule beta_t, alpha_t, alpha_bar_t            (lesson 01)
    diffusion   q(x_t | x_0), the x0 / eps / score / v conversions, losses (lessons 01-02)
    samplers    DDPM, DDIM, Euler, DPM-Solver++(2M)                        (lessons 02, 08)
    guidance    classifier guidance and classifier-free guidance          (lessons 03-04)
    nn/         the networks (UNet, classifiers, VAE, text encoder)
    datasets    digits and shapes-with-captions
    train       training loop, recipes, safetensors checkpoints with resume
    pretrained  loading the course's shipped checkpoints
    metrics     judge accuracy, diversity, Frechet distance, PSNR
    viz         image grids and plots
    widgets     ipywidgets explorers
    __main__    the command line: python -m course_lib ...
"""

__version__ = "0.1.0"
