"""Segment Anything: the architecture read from a checkpoint, the faster exact image encoder, and
`SamSegmenter`, which embeds an image once and decodes masks for prompt points."""
