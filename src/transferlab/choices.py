"""The named choices of config fields and flags, in one import-free module.

The data, models and training layers validate against these, and the command line shows them in
`--help`, so the help text and the code cannot disagree. Nothing is imported here, which keeps
`transferlab --help` from loading torch.
"""

AUGMENTATIONS = ("none", "study", "standard", "strong", "photo")  # BatchTransform presets
HEADS = ("study", "linear")  # classifier heads (create_model head=)
RECIPES = ("auto", "finetune", "head", "scratch")  # named stage lists (transferlab.recipes)
OPTIMIZERS = ("rmsprop", "sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "step", "plateau")
MONITORS = ("val_loss", "val_acc1", "val_bal_acc")
# What a run does about uneven training classes (transferlab.training.imbalance); `auto` picks.
IMBALANCE_METHODS = ("off", "logit_adjust", "class_weight", "balanced_sampler")
CACHE_MODES = ("auto", "true", "false")
AMP_MODES = ("auto", "off", "bf16", "fp16")
EXTRACT_BACKENDS = ("auto", "eager", "compile", "onnxruntime")
LABELS = ("fine", "coarse")  # CIFAR-100 label sets
# What a folder given to predict is searched for (case-insensitive); other files are skipped.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
EXPORT_FORMATS = ("onnx", "torchscript", "safetensors")  # transferlab export --format
EXPORT_NAMES = {  # file written into RUN_DIR when export's --out is not given
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
    "safetensors": "model.safetensors",
}
ONNX_LOGIT_TOLERANCE = 1e-4  # largest |ONNX Runtime - PyTorch| logit, relative to max(1, max |logit|)
