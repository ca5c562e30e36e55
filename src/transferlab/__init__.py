"""transferlab: image classification by transfer learning.

Reruns (and improves on) a 2018 study that fine-tuned an ImageNet-pretrained InceptionV3 on
CIFAR-100, trained MobileNetV2 from scratch and compared both with a 17,044-parameter CNN.
"""

__version__ = "0.1.0"
