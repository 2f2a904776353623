"""AttnMel: interpretable attention-based melanoma classification for dermoscopy images."""

__version__ = "0.1.0"
