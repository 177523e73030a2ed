from .build import META_ARCH_REGISTRY, build_model
from .dense_detector import DenseDetector
from .panoptic_fpn import PanopticFPN
from .rcnn import GeneralizedRCNN, ProposalNetwork
from .retinanet import RetinaNet
from .semantic_seg import SEM_SEG_HEADS_REGISTRY, SemanticSegmentor, build_sem_seg_head

__all__ = [k for k in globals() if not k.startswith("_")]
