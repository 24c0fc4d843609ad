"""Numbers that say how good generated images are (lessons 04-09).

Lessons 04 and 05 ask "does classifier guidance give better digits, and what does it cost in
diversity?". Looking at a grid is not an answer, so the course measures:

    judge accuracy      does a separate classifier of clean digits (the *judge*, never the guidance
                        classifier) read the digit we asked for?
    diversity           how far apart are samples of the same class (guidance trades this away)?
    Fréchet distance    how far is the distribution of samples from the distribution of real
                        digits, in the judge's feature space?
    roughness           how much pixel-to-pixel noise is in a picture (guided noise blobs, lesson 04)?
    PSNR                how close is a reconstruction to its original (the autoencoder, lesson 06)?

and in the shapes world of lessons 06-09 (pictures made from a prompt):

    shapes_judge_report     does the shapes judge read the shape, colour, size and position asked for?
    clip_zero_shot_accuracy does the tiny CLIP pick the right caption for a real picture?
    clip_frechet_distance   the Fréchet distance in the tiny CLIP's image features (lesson 09)

The Fréchet distance here is computed in the feature space of the course's small digit judge (or
of the tiny CLIP). It is the same formula as FID, but FID means "in the feature space of one
specific Inception-v3", so numbers from this module are NOT FID and cannot be compared with
published FIDs; they compare samplers and guidance scales with each other on the same features.
What running a network costs (FLOPs, time, memory) is measured by ``course_lib.profiling``.

Notation:

    code name        symbol
    ---------        ------
    mean_a, mean_b   μ_a, μ_b      feature means
    cov_a, cov_b     Σ_a, Σ_b      feature covariances
    data_range       R             max - min of the pixel range (2 for images in [-1, 1])
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .captions import ATTRIBUTES, HELDOUT_PAIRS, SHAPES, shape_caption
from .checks import check_choice, check_finite, check_floating, check_int_range, check_labels, check_number
from .datasets import shapes_attributes, shapes_tensors
from .nn.classifier import split_attribute_logits
from .nn.text import build_caption_tokenizer, clip_image_embeds, clip_text_embeds, tokenize_prompts

__all__ = [
    "shapes_prompt_grid",
    "shapes_judge_report",
    "attribute_prompts",
    "clip_zero_shot_accuracy",
    "clip_image_features",
    "clip_frechet_distance",
    "judge_predictions",
    "judge_features",
    "judge_accuracy",
    "per_class_accuracy",
    "Diversity",
    "diversity",
    "feature_statistics",
    "gaussian_frechet_distance",
    "frechet_distance",
    "judge_frechet_distance",
    "roughness",
    "psnr",
    "sample_report",
]


# ----------------------------------------------------------------------------------------------
# Running the judge


def _check_images(images, name: str = "images") -> torch.Tensor:
    check_floating(images, name)
    if images.ndim != 4:
        raise ValueError(
            f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}. "
            f"Add a batch axis with {name}[None] or a channel axis with {name}[:, None]."
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(images.shape)}). Pass at least one image.")
    check_finite(images, name)
    return images


@torch.no_grad()
def _run_judge(judge: nn.Module, images: torch.Tensor, method: str, batch_size: int) -> torch.Tensor:
    """Apply ``judge.<method>`` in eval mode, batch by batch, on the judge's device."""
    check_int_range(batch_size, "batch_size", 1)
    _check_images(images)
    parameter = next(judge.parameters(), None)
    device = parameter.device if parameter is not None else images.device
    dtype = parameter.dtype if parameter is not None else images.dtype
    function = getattr(judge, method)
    was_training = judge.training
    judge.eval()
    try:
        outputs = [
            function(images[start:start + batch_size].to(device=device, dtype=dtype)).float()
            for start in range(0, images.shape[0], batch_size)
        ]
    finally:
        judge.train(was_training)
    return torch.cat(outputs).to(images.device)


def judge_predictions(judge: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The judge's predicted class for each image: argmax of its logits.

    :param judge: a classifier of clean images, ``judge(x) -> logits (B, num_classes)``
                  (``course_lib.nn.classifier.JudgeClassifier``); run in eval mode, without gradients
    :param images: (B, C, H, W) in [-1, 1]; moved batch by batch to the judge's device
    :param batch_size: images per forward pass
    :return: LongTensor (B,) on the device of ``images``
    """
    return _run_judge(judge, images, "forward", batch_size).argmax(dim=1)


def judge_features(judge: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The judge's feature vector of each image, ``judge.features(x)``: (B, D) float32."""
    if not callable(getattr(judge, "features", None)):
        raise TypeError(
            f"{type(judge).__name__} has no features(x) method. Pass a JudgeClassifier "
            f"(course_lib.nn.classifier), whose features(x) returns the (B, D) vectors before its last layer."
        )
    return _run_judge(judge, images, "features", batch_size)


def judge_accuracy(judge: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of images the judge assigns to their intended class.

    For generated images, ``labels`` are the classes we asked the sampler for, so this measures
    "did guidance produce the digit we wanted", as read by an independent classifier.

    :param images: (B, C, H, W) in [-1, 1]
    :param labels: LongTensor (B,), the intended class y of each image
    :return: accuracy in [0, 1]
    """
    _check_images(images)
    check_labels(labels, None, batch_size=images.shape[0])
    logits = _run_judge(judge, images, "forward", batch_size)  # (B, K)
    labels = check_labels(labels, logits.shape[1], batch_size=images.shape[0])
    return (logits.argmax(dim=1).cpu() == labels.cpu()).double().mean().item()


def per_class_accuracy(
    judge: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int = 10, batch_size: int = 256
) -> torch.Tensor:
    """Judge accuracy within each intended class.

    :param labels: LongTensor (B,), the intended class y of each image, in [0, num_classes)
    :param num_classes: number of classes K
    :return: float32 tensor (K,) on the CPU; entry k is the accuracy over the images with label k,
             NaN for a class that has no image
    """
    check_int_range(num_classes, "num_classes", 1)
    _check_images(images)
    labels = check_labels(labels, num_classes, batch_size=images.shape[0]).cpu()
    correct = (judge_predictions(judge, images, batch_size).cpu() == labels).float()
    counts = torch.bincount(labels, minlength=num_classes).float()
    hits = torch.bincount(labels, weights=correct, minlength=num_classes).float()
    return hits / counts  # 0 / 0 = NaN for an empty class


# ----------------------------------------------------------------------------------------------
# Diversity


class Diversity(NamedTuple):
    """Mean within-class pairwise L2 distance, in pixel space and (if given) in feature space."""

    pixels: float
    features: float | None


def _mean_pairwise_distance(vectors: torch.Tensor) -> float:
    # d = 2 / (n (n - 1)) Σ_{i<j} ||v_i - v_j||_2     (each unordered pair once)
    count = vectors.shape[0]
    distances = torch.cdist(vectors, vectors)  # (n, n), zero diagonal
    return (distances.sum() / (count * (count - 1))).item()


def diversity(images: torch.Tensor, labels: torch.Tensor | None = None, features: torch.Tensor | None = None) -> Diversity:
    """How spread out the samples of each class are.

    For each class k with n_k >= 2 samples, the mean L2 distance over all pairs of its samples,
    then the plain average over those classes (every class counts the same, however many samples
    it has). Guidance that collapses a class onto a few typical images lowers this number.

    :param images: (B, C, H, W); distances are in pixel units of the images ([-1, 1] for the course)
    :param labels: LongTensor (B,) of classes, or None to treat the whole batch as one class
    :param features: optional (B, D) judge features of the same images (``judge_features``); then
                     the same average is also computed in feature space
    :return: ``Diversity(pixels, features)``; ``features`` is None when no features were given
    """
    _check_images(images)
    count = images.shape[0]
    if labels is None:
        labels = torch.zeros(count, dtype=torch.long)
    else:
        labels = check_labels(labels, num_classes=None, batch_size=count)
    labels = labels.cpu()
    pixel_vectors = images.detach().reshape(count, -1).double().cpu()  # (B, C*H*W)
    feature_vectors = None
    if features is not None:
        check_floating(features, "features")
        if features.ndim != 2 or features.shape[0] != count:
            raise ValueError(
                f"features has shape {tuple(features.shape)}, expected ({count}, D): one feature vector per image. "
                f"Compute them with judge_features(judge, images)."
            )
        feature_vectors = features.detach().double().cpu()

    classes = [k for k in labels.unique().tolist() if int((labels == k).sum()) >= 2]
    if not classes:
        raise ValueError(
            f"diversity needs at least 2 images of the same class, got {count} images with "
            f"{labels.unique().numel()} different labels. Generate several samples per class."
        )
    pixel_scores, feature_scores = [], []
    for k in classes:
        members = labels == k
        pixel_scores.append(_mean_pairwise_distance(pixel_vectors[members]))
        if feature_vectors is not None:
            feature_scores.append(_mean_pairwise_distance(feature_vectors[members]))
    return Diversity(
        pixels=sum(pixel_scores) / len(pixel_scores),
        features=sum(feature_scores) / len(feature_scores) if feature_vectors is not None else None,
    )


# ----------------------------------------------------------------------------------------------
# Fréchet distance


def _check_features(features, name: str) -> torch.Tensor:
    check_finite(features, name)
    if features.ndim != 2:
        raise ValueError(
            f"{name} must have shape (N, D): N feature vectors of size D, got {tuple(features.shape)}. "
            f"Flatten each sample's features to one vector, e.g. {name}.reshape(N, -1)."
        )
    if features.shape[0] < 2:
        raise ValueError(
            f"{name} has {features.shape[0]} sample(s); a covariance needs at least 2 (and the estimate is "
            f"only reliable with many more than D = {features.shape[1]}). Pass more samples."
        )
    return features


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean μ (D,) and unbiased covariance Σ (D, D) of N feature vectors, in float64.

    :param features: (N, D) with N >= 2
    """
    _check_features(features, "features")
    features = features.detach().double()
    mean = features.mean(dim=0)
    centered = features - mean
    # Σ = 1 / (N - 1) Σ_i (f_i - μ)(f_i - μ)^T
    cov = centered.T @ centered / (features.shape[0] - 1)
    return mean, cov


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix: V diag(√λ) V^T."""
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def gaussian_frechet_distance(
    mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor
) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(μ_a, Σ_a) and N(μ_b, Σ_b).

    :param mean_a: μ_a (D,)
    :param cov_a: Σ_a (D, D), symmetric positive semi-definite
    :param mean_b: μ_b (D,)
    :param cov_b: Σ_b (D, D), symmetric positive semi-definite
    :return: d² >= 0 (a float)
    """
    dim = mean_a.shape[0] if mean_a.ndim == 1 else -1
    for name, tensor, shape in (("mean_a", mean_a, (dim,)), ("mean_b", mean_b, (dim,)),
                                ("cov_a", cov_a, (dim, dim)), ("cov_b", cov_b, (dim, dim))):
        check_finite(tensor, name)
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {shape}: means (D,) and covariances (D, D) "
                f"of the same D, with D taken from mean_a. Use feature_statistics(features) to compute them."
            )
    mean_a, cov_a, mean_b, cov_b = (x.detach().double() for x in (mean_a, cov_a, mean_b, cov_b))
    # Tr((Σ_a Σ_b)^{1/2}) = Tr((Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}): the same eigenvalues, but the right-hand
    # matrix is symmetric PSD, so its square root comes from a stable symmetric eigendecomposition.
    sqrt_a = _sqrt_psd(cov_a)
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt_product = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    # d² = ||μ_a - μ_b||² + Tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^{1/2})
    distance = (mean_a - mean_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_sqrt_product
    return max(distance.item(), 0.0)  # rounding can leave -1e-12 for identical sets


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between two sets of feature vectors, each summarised by a Gaussian.

    This is the FID formula; with the judge's features it is the "Fréchet distance in the judge's
    feature space", not FID (which is defined with Inception-v3 features). Use the same number of
    samples in comparisons: the estimate is biased upwards for small N.

    :param features_a: (N_a, D) feature vectors of one set (e.g. generated digits)
    :param features_b: (N_b, D) feature vectors of the other (e.g. real test digits)
    :return: d² >= 0
    """
    _check_features(features_a, "features_a")
    _check_features(features_b, "features_b")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"features_a has D = {features_a.shape[1]} dimensions but features_b has D = {features_b.shape[1]}. "
            f"Compute both with the same judge."
        )
    return gaussian_frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def judge_frechet_distance(
    judge: nn.Module, images: torch.Tensor, reference_images: torch.Tensor, batch_size: int = 256
) -> float:
    """Fréchet distance in the judge's feature space between ``images`` and ``reference_images``.

    :param judge: a ``JudgeClassifier`` (anything with ``features(x) -> (B, D)``)
    :param images: (N_a, C, H, W) generated images in [-1, 1]
    :param reference_images: (N_b, C, H, W) real images in [-1, 1] (e.g. the digits test split)
    """
    _check_images(images, "images")
    _check_images(reference_images, "reference_images")
    if images.shape[1:] != reference_images.shape[1:]:
        raise ValueError(
            f"images are {tuple(images.shape[1:])} (C, H, W) but reference_images are "
            f"{tuple(reference_images.shape[1:])}. Compare images of the same size and channels."
        )
    return frechet_distance(judge_features(judge, images, batch_size), judge_features(judge, reference_images, batch_size))


def sample_report(judge: nn.Module, images: torch.Tensor, labels: torch.Tensor, reference_images: torch.Tensor,
                  num_classes: int = 10) -> dict:
    """All the numbers of lessons 04-05 for one batch of class-conditional samples.

    :param judge: the evaluation classifier (``JudgeClassifier``), never the guidance classifier
    :param images: (N, C, H, W) samples in [-1, 1]
    :param labels: LongTensor (N,), the class each sample was asked to be
    :param reference_images: real images for the Fréchet distance (e.g. the digits test split)
    :return: {"accuracy", "per_class_accuracy" (list), "diversity_pixels", "diversity_features",
              "frechet_distance"}; the Fréchet distance depends on N (a covariance estimated from
              few samples), so compare only reports with the same N
    """
    features = judge_features(judge, images)
    spread = diversity(images, labels, features=features)
    return {
        "accuracy": judge_accuracy(judge, images, labels),
        "per_class_accuracy": per_class_accuracy(judge, images, labels, num_classes).tolist(),
        "diversity_pixels": spread.pixels,
        "diversity_features": spread.features,
        "frechet_distance": frechet_distance(features, judge_features(judge, reference_images)),
    }


# ----------------------------------------------------------------------------------------------
# Roughness


def roughness(images: torch.Tensor) -> torch.Tensor:
    """How much pixel-to-pixel noise each image holds: the mean squared discrete Laplacian.

    With the 5-point Laplacian (Δx)_ij = x_{i-1,j} + x_{i+1,j} + x_{i,j-1} + x_{i,j+1} - 4 x_ij on the
    interior pixels, roughness = mean over channels and interior pixels of (Δx)². It is 0 for a
    constant or linear image, small for the smooth strokes of a real digit, and large for pixel
    noise (a checkerboard of ±1 gives 64). Lesson 04 uses it to find guided samples that are noise
    blobs rather than digits, whatever a classifier reads in them.

    :param images: (B, C, H, W) with H, W >= 3
    :return: float32 tensor (B,) on the images' device
    """
    _check_images(images)
    if images.shape[-1] < 3 or images.shape[-2] < 3:
        raise ValueError(f"roughness needs images of at least 3x3 pixels, got {tuple(images.shape[-2:])}.")
    x = images.detach().float()
    # Δx_ij = x_{i-1,j} + x_{i+1,j} + x_{i,j-1} + x_{i,j+1} - 4 x_ij          (interior pixels only)
    laplacian = (x[..., :-2, 1:-1] + x[..., 2:, 1:-1] + x[..., 1:-1, :-2] + x[..., 1:-1, 2:]
                 - 4 * x[..., 1:-1, 1:-1])
    return laplacian.pow(2).flatten(1).mean(1)


# ----------------------------------------------------------------------------------------------
# PSNR


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, reduction: str = "mean"):
    """Peak signal-to-noise ratio of each image pair, in decibels.

    :param a: (B, ...) images, e.g. originals in [-1, 1]
    :param b: (B, ...) images of the same shape, e.g. reconstructions
    :param data_range: R, max - min of the pixel range (2.0 for [-1, 1]; 1.0 for [0, 1]; 255 for bytes)
    :param reduction: "mean" (a float: the mean of the per-image PSNRs) or "none" (tensor (B,))
    :return: PSNR; +inf for identical images
    """
    check_floating(a, "a")
    check_floating(b, "b")
    data_range = check_number(data_range, "data_range")
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}. Use 2.0 for images in [-1, 1].")
    if reduction not in ("mean", "none"):
        raise ValueError(f"Unknown reduction {reduction!r}. Expected one of: 'mean', 'none'.")
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(
            f"a has shape {tuple(a.shape)} and b has shape {tuple(b.shape)}; expected the same shape (B, ...) "
            f"with a batch axis first. Add one with x[None] for a single image."
        )
    mse = (a.detach().double() - b.detach().double()).pow(2).flatten(1).mean(dim=1)  # (B,)
    # PSNR = 10 log10(R² / MSE)
    values = 10 * torch.log10(data_range**2 / mse)  # MSE = 0 gives +inf
    if reduction == "none":
        return values.float()
    return values.mean().item()


# ---------------------------------------------------------------------------------------------
# The shapes world: zero-shot accuracy of the tiny CLIP
# ---------------------------------------------------------------------------------------------


def attribute_prompts(attribute: str) -> tuple[list[str], list[str]]:
    """Prompts that name one attribute value each, for every shape: ("a red circle", ...).

    Naming the shape in every prompt keeps the prompts in the caption forms CLIP was trained on.

    :return: (prompts, the value each prompt names)
    """
    check_choice(attribute, list(ATTRIBUTES), "attribute")
    if attribute == "shape":
        return [shape_caption(s) for s in SHAPES], list(SHAPES)
    prompts, values = [], []
    for value in ATTRIBUTES[attribute]:
        for shape in SHAPES:
            prompts.append(shape_caption(shape, **{attribute: value}))
            values.append(value)
    return prompts, values


@torch.no_grad()
def clip_zero_shot_accuracy(model, split: str = "test", num_images: int | None = None, tokenizer=None) -> dict:
    """Zero-shot accuracy of a CLIPModel on each attribute of the shapes pictures of ``split``.

    For attribute a, each picture gets the value of the best-matching prompt among
    ``attribute_prompts(a)`` (y = argmax_k v . t_k, as ``nn.text.zero_shot_predict``); the accuracy
    is the share of pictures whose value is right.

    :return: {"shape": acc, "color": acc, "size": acc, "position": acc}, each in [0, 1]
    """
    tokenizer = tokenizer or build_caption_tokenizer()
    images, _ = shapes_tensors(split, num_images)
    truth = shapes_attributes(split, num_images)
    image_embeds = clip_image_features(model, images)  # (N, P), the pictures encoded once
    device = next(model.parameters()).device
    out = {}
    for attribute, values in ATTRIBUTES.items():
        prompts, prompt_values = attribute_prompts(attribute)
        tokens = {name: ids.to(device) for name, ids in tokenize_prompts(tokenizer, prompts).items()}
        text_embeds = clip_text_embeds(model, **tokens).float().cpu()  # (K, P)
        best = (image_embeds @ text_embeds.T).argmax(dim=1)  # (N,) prompt index
        predicted = torch.tensor([values.index(prompt_values[k]) for k in best.tolist()])
        out[attribute] = round((predicted == truth[attribute]).float().mean().item(), 4)
    return out


# ---------------------------------------------------------------------------------------------
# The shapes world: does a picture show what its prompt asked for?
# ---------------------------------------------------------------------------------------------


def shapes_prompt_grid(heldout: bool = False) -> list[dict]:
    """Every full prompt of the shapes world with its attributes, in a fixed order.

    :param heldout: False: the 160 prompts of colour-shape pairs seen in training (3 shapes x 6
        colours - 2 held-out pairs, x 2 sizes x 5 positions); True: the 20 prompts of the
        held-out pairs (green triangles, blue circles)
    :return: [{"prompt": "a small red circle in the top left", "shape": "circle", "color": "red",
        "size": "small", "position": "top left"}, ...]
    """
    grid = []
    for shape in ATTRIBUTES["shape"]:
        for color in ATTRIBUTES["color"]:
            if ((shape, color) in HELDOUT_PAIRS) != heldout:
                continue
            for size in ATTRIBUTES["size"]:
                for position in ATTRIBUTES["position"]:
                    grid.append({"prompt": shape_caption(shape, color, size, position), "shape": shape,
                                 "color": color, "size": size, "position": position})
    return grid


@torch.no_grad()
def shapes_judge_report(judge: nn.Module, images: torch.Tensor, wanted, batch_size: int = 250,
                        attributes: dict[str, tuple[str, ...]] = ATTRIBUTES) -> dict:
    """How many pictures show what was asked, attribute by attribute, read by the shapes judge.

    :param judge: the shapes judge (``load_course_model("shapes-judge")``): a CNN with four heads
    :param images: (N, 3, 64, 64) in [-1, 1] (clamped here)
    :param wanted: what each picture should show: N dicts with the asked-for "shape", "color",
        "size" and "position" (any may be missing: a prompt that does not name it), e.g. from
        :func:`shapes_prompt_grid`; or integer ids per attribute, {"shape": (N,), ...}, as
        ``datasets.shapes_attributes`` gives them
    :param attributes: the world's attributes and their values, in the order of the judge's logits
        (default: the six colours' ``captions.ATTRIBUTES``; lesson 11's 7-colour judge reads
        ``orange.EXTENDED_ATTRIBUTES``)
    :return: {"shape": share right, "color": ..., "size": ..., "position": ...,
        "all": share with every asked attribute right, "color_and_shape": share with both right}
    """
    images = _check_images(images).clamp(-1, 1)
    if isinstance(wanted, dict):  # ids per attribute -> one dict of values per picture
        wanted = [{name: values[int(check_labels(wanted[name], len(values), images.shape[0],
                                                 f"wanted[{name!r}]")[i])]
                   for name, values in attributes.items() if name in wanted} for i in range(images.shape[0])]
    if len(wanted) != images.shape[0]:
        raise ValueError(f"Got {images.shape[0]} images but {len(wanted)} wanted-attribute entries; "
                         f"pass one dict per image.")
    heads = split_attribute_logits(_run_judge(judge, images, "forward", batch_size),
                                   {name: len(values) for name, values in attributes.items()})
    right = {}
    for name, values in attributes.items():
        predicted = [values[k] for k in heads[name].argmax(1).tolist()]
        # None where the prompt did not ask for this attribute: it counts as right
        right[name] = torch.tensor([w.get(name) is None or w[name] == p for w, p in zip(wanted, predicted)])
    report = {name: round(ok.float().mean().item(), 4) for name, ok in right.items()}
    everything = right["shape"] & right["color"] & right["size"] & right["position"]
    report["all"] = round(everything.float().mean().item(), 4)
    report["color_and_shape"] = round((right["shape"] & right["color"]).float().mean().item(), 4)
    return report


# ---------------------------------------------------------------------------------------------
# The shapes world: Fréchet distance in the tiny CLIP's image features (lesson 09)
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def clip_image_features(model, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """The tiny CLIP's unit-length image embeddings v_i (what the CLIP score compares with a caption).

    :param model: a ``transformers.CLIPModel`` (``load_course_model("shapes-clip")``), run in eval mode
    :param images: (N, 3, H, W) in [-1, 1] (clamped here), moved batch by batch to the model's device
    :param batch_size: images per forward pass
    :return: (N, P) float32 on the CPU, each row of length 1
    """
    check_int_range(batch_size, "batch_size", 1)
    images = _check_images(images)
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        features = []
        for start in range(0, images.shape[0], batch_size):
            pixels = images[start:start + batch_size].clamp(-1, 1).to(parameter.device, parameter.dtype)
            features.append(clip_image_embeds(model, pixels).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(features)


def clip_frechet_distance(model, images: torch.Tensor, reference_images: torch.Tensor | None = None,
                          reference_statistics: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """Fréchet distance between generated and real pictures in the tiny CLIP's image features.

    The FID formula (:func:`gaussian_frechet_distance`) on :func:`clip_image_features`; not FID,
    which is defined with Inception-v3 features. The estimate grows as N shrinks (a covariance from
    few samples), so compare only numbers computed with the same N and the same reference.

    :param model: the tiny CLIP (``load_course_model("shapes-clip")``)
    :param images: (N, 3, H, W) generated pictures in [-1, 1], N >= 2
    :param reference_images: (M, 3, H, W) real pictures in [-1, 1] (e.g. ``shapes_tensors("test")[0]``)
    :param reference_statistics: instead of ``reference_images``, their ``feature_statistics`` (mean,
        covariance) computed once, for many comparisons against the same reference
    :return: d² >= 0
    """
    if (reference_images is None) == (reference_statistics is None):
        raise ValueError("Pass exactly one of reference_images (real pictures) and reference_statistics "
                         "(feature_statistics(clip_image_features(model, real_pictures))).")
    if reference_statistics is None:
        reference_statistics = feature_statistics(clip_image_features(model, reference_images))
    return gaussian_frechet_distance(*feature_statistics(clip_image_features(model, images)), *reference_statistics)


