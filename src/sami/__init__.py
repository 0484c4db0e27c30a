"""sami: Self-Supervised Alignment with Mutual Information (Fränken et al., NeurIPS 2024)."""

from sami.loss import SAMILoss, paper_mutual_information, sami_loss

__version__ = "0.1.0"

__all__ = ["SAMILoss", "paper_mutual_information", "sami_loss", "__version__"]
