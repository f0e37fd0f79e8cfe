"""The model zoo: LeNet-5, the TensorFlow "Deep MNIST" network, AlexNet and a small ResNet."""

from convforge.models.zoo import MODELS, alexnet, deep_mnist, get_model, lenet5, resnet_small

__all__ = ["MODELS", "alexnet", "deep_mnist", "get_model", "lenet5", "resnet_small"]
