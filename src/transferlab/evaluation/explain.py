"""`predict --explain`: the Grad-CAM heatmap of the predicted class over any image file.

The image goes through the model's own preprocessing (`data.preprocess.Preprocess`), exactly as
`predict` feeds it; the heatmap is drawn over the resized image the model saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transferlab.errors import TransferlabError
from transferlab.evaluation.heatmaps import class_activation_maps
from transferlab.io import check_dir_path


def explain_files(model: Any, paths: Sequence[str | Path], out_dir: Path, device: Any = "cpu",
                  max_pixels: int | None = None) -> list[Path]:
    """Write one PNG per image: the image as the model saw it and the heatmap of its top class.

    Args:
        model: a `TransferModel` (a best.pt or weights file; an ONNX graph has no feature stages).
        paths: image files.
        out_dir: the folder for the PNGs (`NNNN_<stem>_gradcam.png`, numbered in input order).
        device: where to run the model.
        max_pixels: refuse larger images (see `data.images.max_image_pixels`).

    Raises:
        TransferlabError: the model is an exported ONNX graph, or captum is missing.
    """
    import torch

    from transferlab.data.images import max_image_pixels
    from transferlab.data.preprocess import Preprocess
    from transferlab.evaluation import figures
    from transferlab.metrics import softmax
    from transferlab.predict import class_names

    if not hasattr(model, "feature_stages"):
        raise TransferlabError("--explain needs the PyTorch model (RUN_DIR/best.pt or a "
                               ".safetensors file), not an exported ONNX graph: Grad-CAM reads "
                               "the gradients of its last feature map")
    out_dir = check_dir_path(out_dir, "--explain folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device).eval()
    # predict's one preprocessing path: each file decoded as the run's dataset decoded it.
    prepare = Preprocess(model.pretrained_cfg, max_pixels=max_image_pixels(max_pixels))
    names = class_names(model)
    temperature = float(getattr(model, "temperature", None) or 1.0)
    written = []
    for n, path in enumerate(paths):
        x = prepare([path]).to(device)
        seen = prepare.resized([path])[0].numpy()
        with torch.no_grad():
            logits = model(x).float().cpu().numpy()
        target = int(logits.argmax())
        prob = float(softmax(logits, temperature)[0, target])
        cam = class_activation_maps(model, x, [target], size=seen.shape[:2])[0]
        fig = figures.heatmap_figure(seen, cam,
                                     f"{Path(path).name}: {names[target]} {100 * prob:.0f}%")
        written.append(figures.save_figure(fig, out_dir / f"{n:04d}_{Path(path).stem}_gradcam.png"))
    return written
