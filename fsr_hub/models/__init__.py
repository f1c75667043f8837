"""Model registry: importing this package registers every fsr_hub architecture with timm."""
from .base import FSRNet, FSROutput, FSRPretrainedCfg, HF_ORG, CIFAR10_CLASSES, hub_id
from .resnet import CifarResNet, fsr_resnet18, cifar_resnet18
from .vgg import CifarVGG, fsr_vgg16, cifar_vgg16
from .wideresnet import CifarWideResNet, fsr_wrn34_10, cifar_wrn34_10

FSR_MODELS = ('fsr_resnet18', 'fsr_vgg16', 'fsr_wrn34_10')
VANILLA_TWINS = {'fsr_resnet18': 'cifar_resnet18', 'fsr_vgg16': 'cifar_vgg16', 'fsr_wrn34_10': 'cifar_wrn34_10'}
#: every architecture this package registers: the FSR models, then their vanilla twins
ALL_MODELS = FSR_MODELS + tuple(VANILLA_TWINS.values())
