"""Analyses of FSR models beyond the accuracy tables: the paper's Table 5 (feature swap, weighted
k-NN), Fig. 1 (Grad-CAM), Table 3's black-box attacks, and robustness-vs-eps curves, with their figures; and
the robust / non-robust feature split of the Information-Bottleneck method (Kim, Lee and Ro, NeurIPS
2021) with its NRF / RF L2 attacks, on any fsr_hub model or timm CNN.

Each analysis returns a JSON-ready dict; ``tools/analyze.py`` runs one per command with a deadline and writes
``<name>.json`` (schema :data:`fsr_hub.schemas.ANALYSIS_SCHEMA`) and its PNG. Figures, Grad-CAM and the
transfer attacks need the ``analysis`` extra (``pip install 'fsr-hub[analysis]'``: grad-cam, matplotlib,
torchattack); the feature swap, k-NN, eps curve, NAttack and the IB split and attacks (without their figures) need
nothing beyond the package.
"""
from .blackbox_section import blackbox_analysis
from .common import ANALYSIS_SCHEMA, PNG_NAMES, AnalysisError, Deadline, require, section_meta
from .curves import EPS_CURVE_255, eps_curve
from .features import (
    KNN_GAMMA, KNN_GAMMA_SOURCE, KNN_KS, TABLE5A_ATTACKS, feature_swap, fsr_features, knn_analysis, weighted_knn,
)
from .gradcam import GRADCAM_FEATURES, gradcam_analysis, gradcam_figure, gradcam_maps
from .ib import IB_BETA, IB_INVERSION, IB_LR, IB_STEPS, feature_cut, ib_split, kl_term
from .ib_attacks import ATTACK_C, ATTACK_LR, ATTACK_STEPS, IB_ATTACKS, ib_attack
from .plots import (
    model_label, plot_eps_curves, plot_feature_swap, plot_ib_attack, plot_ib_split, plot_knn, read_eps_curve,
)
from .report import ANALYSES, attach_sections, copy_figures, png_name

__all__ = [
    'ANALYSES', 'ANALYSIS_SCHEMA', 'ATTACK_C', 'ATTACK_LR', 'ATTACK_STEPS', 'AnalysisError', 'Deadline',
    'EPS_CURVE_255', 'GRADCAM_FEATURES', 'IB_ATTACKS', 'IB_BETA', 'IB_INVERSION', 'IB_LR', 'IB_STEPS', 'KNN_GAMMA',
    'KNN_GAMMA_SOURCE', 'KNN_KS', 'PNG_NAMES', 'TABLE5A_ATTACKS', 'attach_sections', 'blackbox_analysis',
    'copy_figures', 'eps_curve', 'feature_cut', 'feature_swap', 'fsr_features', 'gradcam_analysis', 'gradcam_figure',
    'gradcam_maps', 'ib_attack', 'ib_split', 'kl_term', 'knn_analysis', 'model_label', 'plot_eps_curves',
    'plot_feature_swap', 'plot_ib_attack', 'plot_ib_split', 'plot_knn', 'png_name', 'read_eps_curve', 'require',
    'section_meta', 'weighted_knn',
]
