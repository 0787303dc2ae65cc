"""The DHVC network and its objective: a pure PyTorch composition of ``dhvc_ext.distributions`` and
``dhvc_ext.mixture`` (no kernel is called from here except through them)."""
from dhvc_ext.models.dhvc import LOSS_TERMS, DHVCNet, LossWeights, dhvc_loss
from dhvc_ext.models.networks import MLP, ConvDecoder, ConvEncoder

__all__ = ["LOSS_TERMS", "ConvDecoder", "ConvEncoder", "DHVCNet", "LossWeights", "MLP", "dhvc_loss"]
