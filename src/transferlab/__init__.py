"""transferlab: image classification by transfer learning.

Reruns (and improves on) a 2018 study that fine-tuned an ImageNet-pretrained InceptionV3 on
CIFAR-100, trained MobileNetV2 from scratch and compared both with a 17,044-parameter CNN.
"""

from transferlab.threads import configure_threads as _configure_threads

__version__ = "0.1.0"

# Before anything imports torch: libgomp reads its wait policy once, when it loads, and its
# default spin-waiting collapses training on a shared CPU (transferlab/threads.py).
_configure_threads()
