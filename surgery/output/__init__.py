"""What an explanation looks like outside the engine: overlays, histograms, PNG encoding,
result.json/maps.npz files and the COCO export."""
