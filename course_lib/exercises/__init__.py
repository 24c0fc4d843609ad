"""Self-grading exercises: checks of a learner's functions against course_lib (lessons 01-11).

In each exercise the learner writes a function between nbgrader's ``### BEGIN SOLUTION`` and
``### END SOLUTION`` markers, and the next cell checks it:

    exercises.check_q_sample(q_sample_mine)

A check runs the function on a few seeded inputs (several shapes; batches with a different t
per image), compares the result with course_lib's own implementation, and prints a verdict of
two to four lines:

    ✅ Correct: ...        what was verified
    ❌ Not yet: ...        what differs, expected against received, and a hint
    ⏳ Not done yet: ...   the function still raises NotImplementedError (the student version)

It returns True or False and never raises, so a notebook runs to the end either way; an
nbgrader test cell can ``assert exercises.check_q_sample(q_sample_mine)``.

How the hint is chosen: each check also computes what the typical mistakes return (a wrong
sign, ``alpha_bar[t - 1]``, a missing square root, swapped arguments, Ho & Salimans' w for the
guidance scale, ...). When the learner's result equals one of them, the hint names that mistake;
otherwise it restates the formula.

===============================  =============================================  ======
check                            the learner's function                         lesson
===============================  =============================================  ======
``check_q_sample``               fn(x0, t, noise, alpha_bar) -> x_t             01
``check_alpha_bar``              fn(betas) -> alphas_cumprod                    01
``check_schedule_prediction``    fn(kind) -> where SNR(t) crosses 1 and         01
                                 sqrt(ᾱ_(T-1)) of a schedule: predict, then run
``check_pred_x0``                fn(x_t, eps, alpha_bar_t) -> pred_x0           02
``check_ddim_step``              fn(x_t, eps, alpha_bar_t, alpha_bar_prev)      02
``check_sampler_prediction``     fn(sampler) -> whether DDIM (η = 0) and DDPM   02
                                 give the same pictures from the same x_T with
                                 another generator, with fewer steps: predict,
                                 then run
``check_noised_component``       fn(mean, covariance, alpha_bar)                03
                                 -> (mean_t, covariance_t)
``check_tweedie``                fn(x_t, score, alpha_bar) -> E[x_0 | x_t]      03
``check_guidance_prediction``    fn(scale) -> a dict of two predictions about   03
                                 guidance with exact scores: predict, then run
``check_classifier_guided_eps``  fn(eps, grad_log_prob, alpha_bar_t, scale)     04
``check_bayes_score``            fn(score_uncond, grad_log_p_y_given_x, scale)  04
``check_eps_form_mean_shift``    fn(grad_log_prob, scale, alpha_bar_t,          04
                                 alpha_bar_prev) -> how far the ε-form of
                                 guidance moves DDPM's mean, β_t/sqrt(α_t)·λ·grad
``check_cfg``                    fn(eps_uncond, eps_cond, guidance_scale)       05
``check_batch_of_two``           fn(model, x, t, labels, null_label)            05
                                 -> (eps_uncond, eps_cond), one forward pass
``check_guidance_comparison``    fn(scale) -> "classifier", "cfg" or "same":    05
                                 which guidance the judge reads as asked more
                                 often at λ = 0, 1, 10: predict, then run
``check_kl_diagonal_gaussian``   fn(mean, logvar) -> KL(q(z|x) || N(0, I))      06
                                 per image, shape (B,)
``check_reparameterise``         fn(mean, logvar, eps) -> z = mu + sigma·eps    06
``check_kl_weight_prediction``   fn(quantity) -> "larger" or "smaller": what a   06
                                 KL weight 10,000 times stronger does to the
                                 latents (spread of mu, sigma, a sample's PSNR)
                                 on a short fine-tune: predict, then run
``check_cross_attention``        fn(q, k, v) -> softmax(Q K^T / sqrt(d)) V      07
                                 per head, q (B, h, N, d), k and v (B, h, L, d)
``check_clip_contrastive_loss``  fn(image_embeds, text_embeds, logit_scale)     07
                                 -> CLIP's symmetric loss, a scalar
``check_token_state_prediction`` fn(edit) -> "the same picture", "a different  07
                                 picture, not blue" or "a blue picture": four
                                 edits of a prompt's token states, sampled and
                                 judged: predict, then run
``check_guided_noise``           fn(unet, latents, t, prompt_embeds,            08
                                 negative_prompt_embeds, guidance_scale) -> eps,
                                 one UNet pass over the batch of two
``check_decode_latents``         fn(vae, latents) -> images in [0, 1]           08
``check_cyan_scale``             fn(count_cyan) -> the smallest guidance scale  08
                                 at which the negative prompt "red" turns every
                                 circle cyan, graded by measuring
``check_euler_step``             fn(x, eps, sigma, sigma_next) -> x_next,       09
                                 one Euler step of the ODE in sigma
``check_img2img_timesteps``      fn(timesteps, strength) -> the timesteps       09
                                 img2img runs, timesteps[n - int(n strength):]
``check_img2img_prediction``     fn(edit) -> the strength at which img2img      09
                                 changes a shape, a colour or a size: predict,
                                 then run
``check_lora_weight``            fn(weight, lora_A, lora_B, alpha) -> the        11
                                 adapted weight W + (α/r)·B·A
``check_ddim_inverse_step``      fn(z_prev, eps, alpha_bar_t, alpha_bar_prev)   11
                                 -> z_t, DDIM's step (η = 0) run backwards
===============================  =============================================  ======

The package holds the grading engine (:mod:`.grading`: running the learner's function, comparing,
every verdict's wording) and one module per lesson with that lesson's checks
(:mod:`.lesson01` ... :mod:`.lesson11`). Notebooks import
the package and call ``exercises.check_...``; every check is re-exported here.
"""

from .lesson01 import check_alpha_bar, check_q_sample, check_schedule_prediction
from .lesson02 import check_ddim_step, check_pred_x0, check_sampler_prediction
from .lesson03 import check_guidance_prediction, check_noised_component, check_tweedie
from .lesson04 import check_bayes_score, check_classifier_guided_eps, check_eps_form_mean_shift
from .lesson05 import check_batch_of_two, check_cfg, check_guidance_comparison
from .lesson06 import check_kl_diagonal_gaussian, check_kl_weight_prediction, check_reparameterise
from .lesson07 import check_clip_contrastive_loss, check_cross_attention, check_token_state_prediction
from .lesson08 import check_cyan_scale, check_decode_latents, check_guided_noise
from .lesson09 import check_euler_step, check_img2img_prediction, check_img2img_timesteps
from .lesson11 import check_ddim_inverse_step, check_lora_weight

__all__ = [
    "check_q_sample",
    "check_alpha_bar",
    "check_schedule_prediction",
    "check_pred_x0",
    "check_ddim_step",
    "check_sampler_prediction",
    "check_noised_component",
    "check_tweedie",
    "check_guidance_prediction",
    "check_classifier_guided_eps",
    "check_bayes_score",
    "check_eps_form_mean_shift",
    "check_cfg",
    "check_batch_of_two",
    "check_guidance_comparison",
    "check_kl_diagonal_gaussian",
    "check_reparameterise",
    "check_kl_weight_prediction",
    "check_cross_attention",
    "check_clip_contrastive_loss",
    "check_token_state_prediction",
    "check_guided_noise",
    "check_decode_latents",
    "check_cyan_scale",
    "check_euler_step",
    "check_img2img_timesteps",
    "check_img2img_prediction",
    "check_lora_weight",
    "check_ddim_inverse_step",
]
