"""sanitizer: detect and irreversibly redact every face in image and video datasets."""

__version__ = "0.1.0"
