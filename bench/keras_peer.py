"""The study's stack as the peer: the three models and two stages in Keras 3 on TensorFlow.

Written the way the 2018 study worked: `keras.applications` networks with a Sequential-style head,
`model.compile` + `fit` / `train_on_batch`, and a frozen base that is recomputed every head
epoch (`base.trainable = False`, then `fit` on the images). The architectures mirror
transferlab's exactly where the study defined them:

* benchmark CNN: 3 x [Conv2D 2x2 'same' + ReLU, MaxPool 2] with 16/32/64 filters, GAP, Dense k
  (17,044 parameters for k = 100, as transferlab.models.benchmark_cnn);
* MobileNetV2 from scratch: built from the paper's table as the study did (transferlab's own
  table, sent in the job by bench/run.py so that this process never imports PyTorch: TensorFlow
  then PyTorch in one process crashed), width multiplier and CIFAR stem included, then the study's head
  (Dropout 0.3, Dense k); the pretrained-backbone extraction rows use
  `keras.applications.MobileNetV2`;
* InceptionV3: `keras.applications.InceptionV3(weights=None, include_top=False)`, then the
  study's head (GAP, Dense 1024 ReLU, Dropout 0.3, Dense k). Random initial weights: throughput
  does not depend on the values.

Run by bench/run.py in its own process (TensorFlow and PyTorch in one process fight over thread
pools and memory): ``python bench/keras_peer.py SPEC.json OUT.json``. SPEC lists jobs; OUT gets
their timings. Needs bench/requirements.txt (TensorFlow, Keras 3); not part of the package.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Quiet TensorFlow's C++ start-up banner before it is imported; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# transferlab's InceptionV3 block names in order, and the Keras layer that ends each block.
INCEPTION_BLOCKS = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                    "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
KERAS_BLOCK_ENDS = tuple(f"mixed{i}" for i in range(len(INCEPTION_BLOCKS)))
STUDY_HIDDEN, STUDY_DROPOUT = 1024, 0.3


def configure_threads(threads: int) -> None:
    """Use `threads` threads inside each op, as torch.set_num_threads does for PyTorch."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)


def benchmark_cnn(num_classes: int, size: int):
    """The study's 17,044-parameter CNN (for k = 100) in Keras."""
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 3))
    x = inputs
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 2, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="benchmark_cnn")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Channels rounded to a multiple of `divisor`, never below 90% of `value` (the paper's code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def mobilenet_v2_table(size: int, table: dict[str, Any], width_mult: float = 1.0, cifar_stem: bool = False):
    """MobileNetV2 from the paper's Table 2 without its classifier.

    Args:
        size: input side (px).
        table: {"rows": [[t, c, n, s], ...], "stem": channels, "last": channels}, transferlab's.
        width_mult: channel multiplier.
        cifar_stem: stride 1 in the stem and the first strided row (32 px inputs).
    """
    import keras
    from keras import layers

    BOTTLENECK_ROWS, STEM_CHANNELS, LAST_CHANNELS = table["rows"], table["stem"], table["last"]

    def conv_bn(x, filters: int, kernel: int, stride: int = 1, act: bool = True, depthwise: bool = False):
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False)(x)
        else:
            x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU(6.0)(x) if act else x

    inputs = keras.Input((size, size, 3))
    channels = make_divisible(STEM_CHANNELS * width_mult)
    x = conv_bn(inputs, channels, 3, 1 if cifar_stem else 2)
    first_strided = True
    for t, c, n, s in BOTTLENECK_ROWS:
        if cifar_stem and s == 2 and first_strided:
            s, first_strided = 1, False
        out = make_divisible(c * width_mult)
        for i in range(n):
            stride = s if i == 0 else 1
            y = conv_bn(x, channels * t, 1) if t != 1 else x
            y = conv_bn(y, 0, 3, stride, depthwise=True)
            y = conv_bn(y, out, 1, act=False)  # linear bottleneck
            x = layers.Add()([x, y]) if stride == 1 and channels == out else y
            channels = out
    x = conv_bn(x, make_divisible(LAST_CHANNELS * max(1.0, width_mult)), 1)
    return keras.Model(inputs, x, name="mobilenet_v2_paper")


def backbone(name: str, size: int, model_kwargs: dict[str, Any] | None = None,
             table: dict[str, Any] | None = None):
    """A `keras.applications` base without its top, randomly initialised."""
    import keras

    if name == "inception_v3":
        return keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(size, size, 3))
    if name == "mobilenet_v2":
        return keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3))
    if name == "mobilenet_v2_paper":
        if table is None:
            raise ValueError("mobilenet_v2_paper needs the paper's table in the job ('table')")
        kwargs = {k: v for k, v in (model_kwargs or {}).items() if k in ("width_mult", "cifar_stem")}
        return mobilenet_v2_table(size, table, **kwargs)
    raise ValueError(f"no Keras peer for backbone {name!r}")


def study_head(features, num_classes: int, hidden: bool):
    """GAP, [Dense 1024 ReLU], Dropout 0.3, Dense k: the study's heads (hidden for InceptionV3)."""
    from keras import layers

    x = layers.GlobalAveragePooling2D()(features)
    if hidden:
        x = layers.Dense(STUDY_HIDDEN, activation="relu")(x)
    x = layers.Dropout(STUDY_DROPOUT)(x)
    return layers.Dense(num_classes)(x)


def build_model(name: str, num_classes: int, size: int, *, resize_from: int | None = None,
                model_kwargs: dict[str, Any] | None = None, table: dict[str, Any] | None = None):
    """(model, base) for a transferlab registry name; base is None for the benchmark CNN.

    With `resize_from`, the model takes raw 0..255 images of that size and resizes and rescales
    them itself (Resizing + Rescaling layers), as a study feeding 32 px CIFAR arrays to `fit` would.
    """
    import keras
    from keras import layers

    if name == "benchmark_cnn":
        return benchmark_cnn(num_classes, size), None
    base = backbone(name, size, model_kwargs, table)
    if resize_from is None:
        inputs = keras.Input((size, size, 3))
        x = inputs
    else:
        inputs = keras.Input((resize_from, resize_from, 3))
        x = layers.Resizing(size, size, interpolation="bilinear")(inputs)
        x = layers.Rescaling(1 / 127.5, offset=-1.0)(x)  # the Keras applications' [-1, 1] scaling
    outputs = study_head(base(x), num_classes, hidden=name == "inception_v3")
    return keras.Model(inputs, outputs, name=name), base


def set_trainable(model, base, train: str) -> None:
    """Apply transferlab's `train:` setting ("all", "head", "from:<block>") to a Keras model."""
    if base is None or train == "all":
        model.trainable = True
        return
    if train == "head":
        base.trainable = False
        return
    block = train.removeprefix("from:")
    if block not in INCEPTION_BLOCKS:
        raise ValueError(f"no Keras mapping for freeze boundary {train!r}")
    # The Keras fine-tuning guide's recipe: freeze every layer up to the end of the previous block.
    last_frozen = KERAS_BLOCK_ENDS[INCEPTION_BLOCKS.index(block) - 1]
    names = [layer.name for layer in base.layers]
    stop = names.index(last_frozen) + 1
    base.trainable = True
    for layer in base.layers[:stop]:
        layer.trainable = False


def optimizer(spec: dict[str, Any]):
    """A Keras optimiser from {"name": "rmsprop" | "sgd" | "adam", "lr": float, "momentum": float}."""
    import keras

    name, lr = spec.get("name", "rmsprop"), spec.get("lr", 1e-3)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr, momentum=spec.get("momentum", 0.0))
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=spec.get("momentum", 0.0))
    if name in ("adam", "adamw"):
        return keras.optimizers.Adam(learning_rate=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def compile_model(model, opt_spec: dict[str, Any]) -> None:
    """Compile with the study's loss, on logits."""
    import keras

    model.compile(optimizer=optimizer(opt_spec),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def resized_batch(images, size: int, batch: int):
    """float32 (batch, size, size, 3) in [-1, 1] from the first `batch` uint8 images."""
    import numpy as np
    import tensorflow as tf

    x = tf.image.resize(images[:batch].astype(np.float32), (size, size), method="bilinear")
    return (x / 127.5 - 1.0).numpy()


def timed(step, warmup: int, repeats: int) -> list[float]:
    """Seconds of `repeats` calls of `step` after `warmup` calls (each call returns host values)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def job_peak(job: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """TensorFlow's float32 matmul rate: the machine's peak as TensorFlow sees it."""
    import tensorflow as tf

    n = job["n"]
    a = tf.random.normal((n, n), seed=0)
    b = tf.random.normal((n, n), seed=1)
    matmul = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))  # the sum forces a host sync
    times = timed(lambda: matmul().numpy(), job.get("warmup", 1), job.get("repeats", 5))
    return {"flops_per_s": 2.0 * n**3 / statistics.median(times), "times_s": times}


def job_train(job: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """Median training-step time of one model (`train_on_batch` on a prepared batch)."""
    import numpy as np

    size, batch = job["input_size"], job["batch"]
    model, base = build_model(job["model"], job["num_classes"], size, model_kwargs=job.get("model_kwargs"),
                              table=job.get("table"))
    set_trainable(model, base, job.get("train", "all"))
    compile_model(model, job.get("optimizer", {}))
    x = resized_batch(data["images"], size, batch)
    y = data["labels"][:batch].astype(np.int64)
    times = timed(lambda: model.train_on_batch(x, y), job["warmup"], job["repeats"])
    return {"times_s": times, "batch": batch, "params": int(model.count_params()),
            "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights))}


def job_extract(job: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """Median time of a frozen base's forward pass on one batch (`predict_on_batch`)."""
    size, batch = job["input_size"], job["batch"]
    base = backbone(job["model"], size)
    base.trainable = False
    x = resized_batch(data["images"], size, batch)
    times = timed(lambda: base.predict_on_batch(x), job["warmup"], job["repeats"])
    return {"times_s": times, "batch": batch}


def job_head_stage(job: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The study's head stage: `fit` on raw images with the base frozen, the base rerun every epoch."""
    import keras
    import numpy as np

    n, size, epochs = job["images"], job["input_size"], job["epochs"]
    images = data["images"][:n].astype(np.float32)
    labels = data["labels"][:n].astype(np.int64)
    start = time.perf_counter()
    model, base = build_model(job["model"], job["num_classes"], size, resize_from=images.shape[1])
    set_trainable(model, base, "head")
    compile_model(model, job.get("optimizer", {}))

    class EpochTimes(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.times, self.start = [], 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    clock = EpochTimes()
    model.fit(images, labels, batch_size=job["batch"], epochs=epochs, shuffle=True, verbose=0,
              callbacks=[clock])
    return {"epoch_times_s": clock.times, "wall_s": time.perf_counter() - start, "images": n,
            "epochs": epochs}


JOBS = {"peak": job_peak, "train": job_train, "extract": job_extract, "head_stage": job_head_stage}


def environment() -> dict[str, Any]:
    """TensorFlow / Keras versions, devices and thread settings, for RESULTS.md."""
    import keras
    import tensorflow as tf

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
    }


def main(argv: list[str]) -> int:
    """Run the jobs of a spec file and write their results as JSON (atomically)."""
    if len(argv) != 2:
        print("usage: keras_peer.py SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    import numpy as np

    configure_threads(spec["threads"])
    arrays = np.load(spec["data"])
    data = {"images": arrays["images"], "labels": arrays["labels"]}
    results: dict[str, Any] = {"environment": environment(), "jobs": {}}
    out = Path(argv[1])
    for job in spec["jobs"]:
        print(f"keras peer: {job['id']}", file=sys.stderr, flush=True)
        try:
            results["jobs"][job["id"]] = JOBS[job["kind"]](job, data)
        except Exception as err:  # noqa: BLE001 - one failed job must not lose the others
            results["jobs"][job["id"]] = {"error": f"{type(err).__name__}: {err}"}
        # Written after every job, so a run cut short still reports what it measured.
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results))
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
