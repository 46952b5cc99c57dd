"""vital-hub: the BioMed-VITAL method on the Hugging Face stack."""

__version__ = "0.1.0"
