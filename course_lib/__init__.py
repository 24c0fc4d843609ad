"""course_lib: Stable Diffusion from the ground up.

One module per idea of the course, bottom to top (a module imports only from those above it
in this list):

    checks      argument checks that raise errors a learner can act on
    captions    the shapes world: shapes, colours, sizes, positions, the caption template
    schedules   the noise schedule beta_t, alpha_t, alpha_bar_t            (lesson 01)
    diffusion   q(x_t | x_0), the x0 / eps / score / v conversions, losses (lessons 01-02)
    samplers    DDPM, DDIM, Euler, DPM-Solver++(2M)                        (lessons 02, 09)
    guidance    classifier guidance and classifier-free guidance          (lessons 04-05)
    nn/         the networks (UNet, classifiers, VAE, caption tokenizer and tiny CLIP)
    datasets    digits and shapes-with-captions
    train       training loop, recipes, safetensors checkpoints with resume
    pretrained  loading the course's shipped checkpoints
    metrics     judge accuracy, diversity, Frechet distance, PSNR
    experiments the measured guidance sweeps of lessons 04-05, cached
    viz         image grids and plots
    exercises   the checks of the self-grading exercises
    student     student versions of the notebooks (make student)
    i18n        the language setting (English, 简体中文) and the translated lessons
    __main__    the command line: python -m course_lib ...
"""

from .i18n import get_language, set_language  # noqa: F401  (course_lib.set_language("zh"))

__version__ = "0.1.0"
