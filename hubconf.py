"""torch.hub entry points: ``torch.hub.load('<repo or checkout>', 'fsr_resnet18', pretrained=True)``."""
dependencies = ['torch', 'timm', 'safetensors', 'huggingface_hub']

from fsr_hub.models import (  # noqa: E402,F401
    cifar_resnet18, cifar_vgg16, cifar_wrn34_10, fsr_resnet18, fsr_vgg16, fsr_wrn34_10,
)
