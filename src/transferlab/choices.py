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
MONITORS = ("val_loss", "val_acc1")
CACHE_MODES = ("auto", "true", "false")
AMP_MODES = ("auto", "off", "bf16", "fp16")
EXTRACT_BACKENDS = ("auto", "eager", "compile", "onnxruntime")
LABELS = ("fine", "coarse")  # CIFAR-100 label sets
# What a folder given to predict is searched for (case-insensitive); other files are skipped.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
