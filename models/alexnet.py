"""AlexNet, with torchvision's layer sizes (state_dict keys and shapes equal torchvision's).

torchvision's AlexNet (and so this one) is the single-tower variant of Krizhevsky's
"One weird trick" paper (arXiv:1404.5997): 64/192/384/256/256 filters, no local response
normalisation, adaptive 6x6 pooling before the classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from enet_serve.models.registry import IMAGENET_CLASSIFIER, register_model


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# gflops: FlopCounterMode total / 1e9 (2 flops per multiply-add; conv and linear only), 224x224, batch 1.
@register_model(
    name="alexnet",
    **IMAGENET_CLASSIFIER,
    input_size=(224, 224),
    params=61_100_840,
    gflops=1.428,
    reference={"metric": "top1", "value": 56.522, "dataset": "ImageNet-1k val",
               "source": "torchvision weights AlexNet_Weights.IMAGENET1K_V1"},
    paper="A. Krizhevsky, I. Sutskever, G. E. Hinton, 2012. ImageNet Classification with Deep Convolutional "
    "Neural Networks (NIPS 2012); layer sizes of A. Krizhevsky, 2014. One weird trick for parallelizing "
    "convolutional neural networks, arXiv:1404.5997",
    torchvision_compatible=True,
)
def alexnet(*, num_classes: int = 1000, dropout: float = 0.5) -> AlexNet:
    return AlexNet(num_classes=num_classes, dropout=dropout)
