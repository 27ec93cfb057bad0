"""Which pixels an answer rests on: Integrated Gradients (Captum) against a blank image.

Integrated Gradients (Sundararajan et al., 2017) credits each pixel with its share of how far the
model's score for a class moved between a blank image and the digit: the pixel's change times the
score's gradient averaged along the straight path from the blank image to the digit. Its maps
add up: the attributions of an image sum to the score of the digit minus the score of the blank
image (completeness), so they can be checked and compared between models.

It was chosen over Occlusion (blanking a sliding window and measuring the score's fall) for three
reasons that matter on 28 × 28 digits. Its map is per pixel, where a window of a few pixels
smears a 2-pixel stroke into a block; it is signed, showing the ink that speaks against the
answer as well as for it; and it costs ``n_steps`` forward and backward passes, where a 4 × 4
window at stride 2 costs 169 forward passes. What both share with a blank baseline: a pixel
that is blank in the digit gets no attribution, so a map shows what the ink did, not what
missing ink would have done.
"""

from __future__ import annotations

import torch

from lit_mnist.models.classifier import MNISTClassifier

#: Steps of Integrated Gradients' path integral (Gauss-Legendre points).
N_STEPS = 16
#: The most path points evaluated in one forward pass, which bounds the memory used.
INTERNAL_BATCH_SIZE = 512


def integrated_gradients(
    model: MNISTClassifier,
    pixels: torch.Tensor,
    target: torch.Tensor | None = None,
    n_steps: int = N_STEPS,
) -> torch.Tensor:
    """Integrated Gradients of the score of ``target`` for each image, one number per pixel.

    The score is the network's output for the class (the logit, for models with logits), and
    the attribution is taken with respect to the network's input, the output of
    ``model.prepare_input``, from the blank image prepared the same way. ``prepare_input`` maps
    each pixel by the same affine function (÷255, standardisation), which Integrated Gradients'
    attributions do not change under, so they are also the attributions of the stored pixels.
    Runs in evaluation mode (leaving the model in the mode it was in) and works inside
    ``torch.inference_mode`` or ``torch.no_grad`` too (Lightning's validation, for instance).

    Args:
        model: The classifier.
        pixels: Stored pixels as ``forward`` takes them, ``[B, 1, 28, 28]``: uint8 or floats in [0, 1].
        target: The class to explain for each image, ``[B]``; ``None`` takes the model's answer.
        n_steps: Points of the path integral: more are closer to completeness and slower.

    Returns:
        Float attributions shaped like ``pixels``, on its device; their sum over an image is the
        score of the image minus the score of the blank image, up to the integral's error.
    """
    from captum.attr import IntegratedGradients  # here: importing Captum takes a second

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            pixels = pixels.clone()  # outside inference mode, so that autograd can use it
            inputs = model.prepare_input(pixels)
            baseline = model.prepare_input(torch.zeros_like(pixels))
            if target is None:
                with torch.no_grad():
                    target = model.net(inputs).argmax(dim=-1)
            attributions = IntegratedGradients(model.net).attribute(
                inputs,
                baseline,
                target=target.clone(),
                n_steps=n_steps,
                method="gausslegendre",
                internal_batch_size=INTERNAL_BATCH_SIZE,
            )
        return attributions.detach()
    finally:
        model.train(was_training)


#: The colours of attributions for the explained class (red) and against it (blue), RGB in [0, 1].
FOR_COLOUR, AGAINST_COLOUR = (0.9, 0.16, 0.12), (0.16, 0.43, 1.0)


def heat_map(images: torch.Tensor, attributions: torch.Tensor) -> torch.Tensor:
    """RGB pictures ``[N, 3, H, W]`` in [0, 1]: each image dimmed, its attributions laid over it in colour.

    Red marks what raised the explained class's score, blue what lowered it; the opacity is the
    square root of each value's share of the image's largest absolute value, so that small
    contributions show too (the page, ``lit_mnist/static/index.html``, draws its maps the same way).

    Args:
        images: Grey images ``[N, H, W]`` in [0, 1].
        attributions: Their attributions, ``[N, H, W]``.
    """
    images, attributions = images.detach().float().cpu(), attributions.detach().float().cpu()
    scale = attributions.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    alpha = (attributions.abs() / scale).sqrt()[:, None]
    colour = torch.where(
        attributions[:, None] >= 0,
        torch.tensor(FOR_COLOUR)[None, :, None, None],
        torch.tensor(AGAINST_COLOUR)[None, :, None, None],
    )
    return 0.35 * images[:, None] * (1 - alpha) + colour * alpha
