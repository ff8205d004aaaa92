"""Byte formats: pure codecs between bytes and objects (keys, ids, blobs, manifests, values).

Knows nothing of stores, files on disk, the repository's protocols or the application.
"""
