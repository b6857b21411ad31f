"""Segment Anything and SAM 2.1: each network's architecture read from its checkpoint, SAM's faster exact
image encoder, and the segmenters (`SamSegmenter`, `Sam2Segmenter`, sharing `Segmenter`), which embed an
image once and decode masks for prompt points."""
