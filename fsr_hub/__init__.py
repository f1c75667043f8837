"""fsr-hub: adversarially robust image classifiers with Feature Separation and Recalibration (CVPR 2023).

``import fsr_hub`` registers the models with timm:

    >>> import fsr_hub, timm
    >>> model = timm.create_model('fsr_resnet18', num_classes=10)
"""
from .fsr import FSR, FSRArgs, FSRAux, gumbel_sigmoid_mask
from .losses import fsr_aux_loss, highest_wrong_class, recalibration_loss, separation_loss
from .models import (
    CIFAR10_CLASSES, FSR_MODELS, VANILLA_TWINS, FSRNet, FSROutput, FSRPretrainedCfg, FSRWrapper, add_fsr,
    cifar_resnet18, cifar_vgg16, cifar_wrn34_10, fsr_resnet18, fsr_vgg16, fsr_wrn34_10,
)
from .catalog import DEFAULT_ORG, hub_id

__version__ = '0.1.0'
