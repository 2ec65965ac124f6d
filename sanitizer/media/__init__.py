"""Decoding and encoding of media: images with Pillow, video with PyAV."""
